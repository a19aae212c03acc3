"""`merino-edge serve`: the OpenAI-style HTTP API on a Unix socket (and optionally TCP).

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (both with SSE
streaming), `GET /v1/models`, `GET /v1/models/{id}`, `GET /health` (503 while
the model loads or the server shuts down, 200 when ready).  Metrics are served
apart, on their own TCP listener (`metrics.py`), by the same server and so
under the same connection limits and deadlines.

Requests are continuously batched: up to `parallel` sequences decode together,
more wait FIFO behind a bounded queue (`scheduler.py`); a full queue answers 429.  A client that
disconnects cancels its generation (waiting or running) and frees its slot.
On SIGTERM (or Ctrl-C) the server stops accepting connections, lets running
and queued requests finish for up to `shutdown_grace` seconds, cancels what is
left, and removes its socket.

Security: the Unix socket is mode 0660 (the service user and group only) and
needs no key.  TCP listens on loopback unless told otherwise; a non-loopback
address needs an API key (`--api-key` or `MERINO_EDGE_API_KEY`), which every
TCP request but `/health` must then send as `Authorization: Bearer KEY`.
A loopback listener without a key is still reachable by every local user and
by any web page the board's browser opens, so it takes only requests whose
`Host` names the listener itself (127.0.0.1:PORT, localhost:PORT, [::1]:PORT:
a DNS-rebinding page sends its own name) and POSTs with a JSON content type
(a cross-site form cannot send one without a CORS preflight, which this server
never grants) -- the defence of Ollama and of Starlette's TrustedHostMiddleware.
Connection count and header, body and idle deadlines: `connection_limits.py`.

Errors use OpenAI's body `{"error": {"message", "type", "param", "code"}}`:
400 bad JSON, invalid UTF-8, wrong types, unknown fields, bad sampling values,
prompt over the context; 401 wrong key; 403 foreign Host on TCP; 404 unknown
route or model; 405 wrong method; 408 body not sent in time; 413 body over
`max_body_bytes`; 415 not JSON on TCP; 429 queue full; 503 loading or
shutting down.  Every request is counted under one outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import threading
import traceback
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from merino_edge.bundle import Bundle
from merino_edge.errors import InputError, MerinoError
from merino_edge.runtime.api_responses import DONE, ResponseWriter, public_timings, sse
from merino_edge.runtime.api_schema import APIError, ApiRequest, parse_chat_request, parse_completion_request, parse_json_body
from merino_edge.runtime.connection_limits import ConnectionLimits
from merino_edge.runtime.metrics import DEFAULT_METRICS_ADDR, ServerMetrics, start_tegrastats, with_metrics
from merino_edge.runtime.scheduler import DEFAULT_PREFIX_CACHE_BYTES, Done, Failed, GenerationQueue, Job, default_parallel, slot_bytes
from merino_edge.runtime.socket_path import (
    DEFAULT_BIND_RETRY_S,
    bind_tcp_socket,
    bind_unix_socket,
    default_socket_path,
    is_loopback,
    parse_host_port,
    remove_socket,
    retry_transient,
)

log = logging.getLogger("merino_edge.server")

DEFAULT_QUEUE_SIZE = 32
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context
API_KEY_ENV = "MERINO_EDGE_API_KEY"
# An oversized body is read and dropped up to this many bytes so the client gets its 413 instead of a reset connection.
DRAIN_LIMIT_BYTES = 16 << 20


class ServerState:
    """What the handlers share: the bundle, the model once loaded, the queue and the metrics."""

    def __init__(self, bundle: Bundle, metrics: ServerMetrics, *, model_id: str | None = None, queue_size: int = DEFAULT_QUEUE_SIZE,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, api_key: str | None = None, tcp_hosts: frozenset[str] = frozenset(),
                 body_timeout: float = ConnectionLimits.body_timeout):
        self.bundle = bundle
        self.metrics = metrics
        self.model_id = model_id or bundle.path.resolve().name
        self.queue_size = queue_size
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key
        self.tcp_hosts = tcp_hosts  # Host headers a keyless TCP listener answers
        self.body_timeout = body_timeout
        self.status = "loading"  # -> "ready" | "failed" | "shutting_down"
        self._status_lock = threading.Lock()
        self.load_error: BaseException | None = None
        self.generator = None
        self.tokenizer = None
        self.queue: GenerationQueue | None = None
        self.max_context = bundle.max_context
        self.vocab_size = bundle.arch.vocab_size

    def load(self, backend: str = "auto", threads: int | None = None, parallel: int | None = None,
             prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES, precision: str | None = None) -> None:
        """Create the backend, tokenizer and generator, then start serving (slow: run it off the event loop)."""
        from merino_edge.runtime import Generator, SamplingParams, create_backend
        from merino_edge.tokenizer import Tokenizer

        engine = create_backend(self.bundle, backend, threads=threads, precision=precision)
        self.tokenizer = Tokenizer(self.bundle.tokenizer_path)
        self.generator = Generator(engine, self.tokenizer)
        self.max_context = engine.max_context
        chosen = parallel or default_parallel(engine, self.bundle.arch)
        self.queue = GenerationQueue(self.generator, SamplingParams, self.metrics, max_waiting=self.queue_size, parallel=chosen,
                                     prefix_cache_bytes=prefix_cache_bytes)
        log.info("parallel: %d sequences decode together (%s; KV cache %.0f MiB a slot at context %d; --parallel N to change)", chosen,
                 "as asked" if parallel else "default for this machine's free memory", slot_bytes(engine, self.bundle.arch) / 2**20, engine.max_context)
        self.metrics.set_model(self.model_id, engine.name, engine.precision)
        with self._status_lock:
            if self.status != "loading":  # SIGTERM came while loading: stay down
                return
            self.metrics.ready.set(1)
            self.status = "ready"
        log.info("model %s ready on %s (%s)", self.model_id, engine.name, engine.precision)

    def stop_serving(self) -> None:
        """Answer 503 from now on: "shutting_down" (a failed load keeps its "failed")."""
        with self._status_lock:
            if self.status != "failed":
                self.status = "shutting_down"
            self.metrics.ready.set(0)

    def close(self) -> None:
        self.stop_serving()
        if self.queue is not None:
            self.queue.close()

    # ------------------------------------------------------------ requests

    def require_ready(self) -> None:
        if self.status != "ready":
            what = "the model is still loading" if self.status == "loading" else f"the server is {self.status.replace('_', ' ')}"
            raise APIError(503, f"{what}; retry shortly", type="server_error", code="model_not_ready")

    def authorize(self, request: Request, *, needs_key: bool = True) -> None:
        """TCP requests need the key when one is set (`needs_key`: all but /health), else our own Host and JSON;
        the Unix socket is guarded by its file mode."""
        server = request.scope.get("server")
        if server is None or server[1] is None:
            return
        if self.api_key:
            if not needs_key:
                return
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
                raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')", code="invalid_api_key")
            return
        host = request.headers.get("host", "")
        if host.lower() not in self.tcp_hosts:
            raise APIError(403, f"Host {host!r} is not this server's address (use one of {', '.join(sorted(self.tcp_hosts))})", code="invalid_host")
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if request.method == "POST" and content_type != "application/json":
            raise APIError(415, f"requests on TCP must be 'Content-Type: application/json', not {content_type or 'none'!r}", code="unsupported_media_type")

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_id:
            raise APIError(404, f"The model '{model}' does not exist; this server serves '{self.model_id}'", param="model", code="model_not_found")

    def prepare(self, req: ApiRequest) -> tuple[list[int], dict]:
        """Prompt token ids and SamplingParams keywords of a validated request, checked against the context."""
        stops = tuple(req.sampling.get("stop", ()))
        if req.endpoint == "chat":
            prompt = self.bundle.chat_template.render(req.messages)
            stops += tuple(s for s in self.bundle.chat_template.stop if s not in stops)
        else:
            prompt = req.prompt
        prompt_ids = self.generator.encode(prompt)
        prompt_tokens = len(prompt_ids)
        room = self.max_context - prompt_tokens
        param = "messages" if req.endpoint == "chat" else "prompt"
        if prompt_tokens > self.bundle.max_prompt:
            raise APIError(400, f"the {param} has {prompt_tokens} tokens; this model accepts prompts of at most {self.bundle.max_prompt}",
                           param=param, code="context_length_exceeded")
        if req.max_tokens is None:
            max_tokens = min(DEFAULT_COMPLETION_MAX_TOKENS, room) if req.endpoint == "completions" else room
        else:
            max_tokens = req.max_tokens
        if max_tokens < 1 or max_tokens > room:
            raise APIError(
                400,
                f"This model's maximum context length is {self.max_context} tokens. However, you requested "
                f"{prompt_tokens + max(max_tokens, 1)} tokens ({prompt_tokens} in the {param}, {max(max_tokens, 1)} in the completion). "
                f"Please reduce the length of the {param} or the max_tokens.",
                param="max_tokens" if req.max_tokens is not None and room > 0 else param,
                code="context_length_exceeded",
            )
        sampling = {**req.sampling, "stop": stops, "max_tokens": max_tokens}
        return prompt_ids, sampling


# ------------------------------------------------------------------ handlers


def _error(exc: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    if exc.status in (408, 413):  # answered before the whole body came: the connection cannot carry another request
        headers = {"Connection": "close"}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body; APIError 413 once it exceeds `limit` (after draining it, so the client reads the answer), 408 after `timeout` s."""
    declared = request.headers.get("content-length")
    too_big = declared is not None and declared.isdecimal() and int(declared) > limit
    body, size = bytearray(), 0

    async def read() -> None:
        nonlocal size, too_big
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                too_big = True
            if too_big:
                if size > DRAIN_LIMIT_BYTES:
                    break
                continue
            body.extend(chunk)

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout:g} s", code="request_timeout") from None
    if too_big:
        raise APIError(413, f"the request body is larger than this server accepts ({limit} bytes)", code="request_too_large")
    return bytes(body)


async def _wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _collect(job: Job) -> tuple[str, Done | Failed]:
    parts = []
    while True:
        event = await job.events.get()
        if isinstance(event, Done | Failed):
            return "".join(parts), event
        parts.append(event.text)


def _raise_failure(event: Failed) -> None:
    if isinstance(event.error, APIError):
        raise event.error
    log.error("generation failed:\n%s", "".join(traceback.format_exception(event.error)))
    raise APIError(500, "the generation failed inside the server (see its log)", type="server_error", code="internal_error")


class EventStream(Response):
    """An SSE response that watches for the client going away and then stops the generation."""

    def __init__(self, chunks, on_close):
        # Not Response.__init__: it would declare a Content-Length for the empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        self.chunks = chunks
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

        async def pump():
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        sender = asyncio.ensure_future(pump())
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            sender.cancel()
            self.on_close()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            await self.chunks.aclose()


async def _stream(job: Job, writer: ResponseWriter, include_usage: bool):
    if writer.chat:
        yield writer.chunk(None, role=True)
    while True:
        event = await job.events.get()
        if isinstance(event, Failed):
            try:
                _raise_failure(event)
            except APIError as exc:
                yield sse(exc.body())
            return
        if isinstance(event, Done):
            if event.finish_reason == "cancelled":
                yield sse(APIError(503, "the generation was cancelled (server shutting down)", type="server_error", code="cancelled").body())
                return
            yield writer.chunk(None, event.finish_reason, timings=public_timings(event.timings, event.completion_tokens))
            if include_usage:
                yield writer.usage_chunk(job.prompt_tokens, event.completion_tokens)
            yield DONE
            return
        if event.text:
            yield writer.chunk(event.text)


async def _generate(request: Request, endpoint: str) -> Response:
    state: ServerState = request.app.state.merino
    try:
        state.authorize(request)
        try:
            body = await _read_body(request, state.max_body_bytes, state.body_timeout)
        except ClientDisconnect:  # gone before sending the whole body
            state.metrics.outcome("cancelled")
            return Response(status_code=204)
        data = parse_json_body(body)
        req = parse_chat_request(data) if endpoint == "chat" else parse_completion_request(data, state.vocab_size)
        state.check_model(req.model)
        state.require_ready()
        prompt_ids, sampling = await asyncio.to_thread(state.prepare, req)  # tokenizing a long prompt takes a moment
        job = Job(prompt_ids, sampling, len(prompt_ids))
        state.queue.submit(job)
    except APIError as exc:
        state.metrics.outcome("rejected" if exc.status in (429, 503) else "invalid")
        return _error(exc)
    writer = ResponseWriter(endpoint, state.model_id, req.include_usage)
    if req.stream:
        return EventStream(_stream(job, writer, req.include_usage), on_close=lambda: state.queue.cancel(job))

    collector = asyncio.ensure_future(_collect(job))
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not collector.done():  # the client went away: nobody will read an answer
            return Response(status_code=204)
        text, event = collector.result()
    finally:
        watcher.cancel()
        collector.cancel()
        state.queue.cancel(job)  # no-op for a finished job
    try:
        if isinstance(event, Failed):
            _raise_failure(event)
        if event.finish_reason == "cancelled":
            raise APIError(503, "the generation was cancelled (server shutting down)", type="server_error", code="cancelled")
    except APIError as exc:
        return _error(exc)
    return JSONResponse(writer.body(text, event.finish_reason, job.prompt_tokens, event.completion_tokens, event.timings))


def create_app(state: ServerState) -> FastAPI:
    """The ASGI app over `state`; serving it (socket, signals) is `serve`'s job."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.close()

    app = FastAPI(title="merino-edge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.merino = state

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _generate(request, "completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _generate(request, "chat")

    def model_card() -> dict:
        return {"id": state.model_id, "object": "model", "created": int(state.bundle.path.stat().st_mtime), "owned_by": "merino-edge",
                "max_context": state.max_context}

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            state.authorize(request)
        except APIError as exc:
            return _error(exc)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(request: Request, model: str):
        try:
            state.authorize(request)
            state.check_model(model)
        except APIError as exc:
            return _error(exc)
        return model_card()

    @app.get("/health")
    async def health(request: Request):
        try:
            state.authorize(request, needs_key=False)  # probes need no key, but a keyless TCP listener still checks Host
        except APIError as exc:
            return _error(exc)
        body = {"status": state.status, "model": state.model_id}
        if state.queue is not None:
            body.update(queue_depth=state.queue.depth, running=state.queue.running)
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed for {request.url.path}"
        else:
            message = str(exc.detail)
        return _error(APIError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        state.metrics.outcome("failed")
        return _error(APIError(500, "internal server error (see the server log)", type="server_error", code="internal_error"))

    return app


# -------------------------------------------------------------------- serving


class _Server(uvicorn.Server):
    """uvicorn's server, told about shutdown early, and exiting 0 after a clean SIGTERM instead of re-raising it."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig, frame) -> None:
        self.state.stop_serving()
        super().handle_exit(sig, frame)


def _api_key_for(tcp: str | None, api_key: str | None) -> tuple[tuple[str, int] | None, str | None]:
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if tcp is None:
        return None, api_key
    host, port = parse_host_port(tcp, "--tcp")
    if not is_loopback(host) and not api_key:
        raise InputError(f"--tcp {tcp} is not a loopback address: it needs an API key (--api-key or {API_KEY_ENV})")
    return (host, port), api_key


def own_hosts(host: str, port: int) -> frozenset[str]:
    """The Host headers that name a loopback listener at (host, port): its address and the loopback names, with the port."""
    names = {host, "localhost", "127.0.0.1", "[::1]"} | ({f"[{host}]"} if ":" in host else set())
    return frozenset(f"{name}:{port}".lower() for name in names) | (frozenset(names) if port == 80 else frozenset())


def serve(
    bundle_dir: str | Path,
    *,
    socket_path: str | Path | None = None,
    metrics_addr: str | None = DEFAULT_METRICS_ADDR,
    tcp: str | None = None,
    api_key: str | None = None,
    backend: str = "auto",
    threads: int | None = None,
    precision: str | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    parallel: int | None = None,
    prefix_cache_mib: float = DEFAULT_PREFIX_CACHE_BYTES / 2**20,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    shutdown_grace: float = 10.0,
    limits: ConnectionLimits | None = None,
    bind_retry_s: float = DEFAULT_BIND_RETRY_S,
) -> None:
    """Serve a bundle until SIGTERM / Ctrl-C.  `metrics_addr=None` serves no metrics; `limits` default to `ConnectionLimits()`;
    `parallel=None` picks it from free memory.

    Raises InputError (exit 2) for what configuration must fix, before any socket
    exists when it is the flags or the bundle; UnavailableError (exit 75) when an
    address stayed in use or unassigned for `bind_retry_s` seconds.
    """
    limits = limits or ConnectionLimits()
    if queue_size < 0:
        raise InputError(f"--queue-size must be >= 0, got {queue_size}")
    if parallel is not None and parallel < 1:
        raise InputError(f"--parallel must be at least 1, got {parallel}")
    if prefix_cache_mib < 0:
        raise InputError(f"--prefix-cache-mib must be >= 0, got {prefix_cache_mib}")
    if max_body_bytes < 1024:
        raise InputError(f"--max-body-bytes must be at least 1024, got {max_body_bytes}")
    tcp_addr, api_key = _api_key_for(tcp, api_key)
    metrics_host_port = parse_host_port(metrics_addr, "--metrics-addr") if metrics_addr else None
    bundle = Bundle.load(bundle_dir)
    if precision not in (None, "auto"):
        bundle.onnx_path(precision)  # a graph the bundle lacks fails here, before the socket is bound
    metrics = ServerMetrics()
    state = ServerState(bundle, metrics, queue_size=queue_size, max_body_bytes=max_body_bytes, api_key=api_key,
                        tcp_hosts=own_hosts(*tcp_addr) if tcp_addr else frozenset(), body_timeout=limits.body_timeout)
    socket_path = Path(socket_path) if socket_path else default_socket_path()

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="merino-edge: %(message)s")
    sockets = [retry_transient(lambda: bind_unix_socket(socket_path), bind_retry_s)]
    inode = os.stat(socket_path).st_ino
    tegrastats = None
    try:
        if tcp_addr is not None:
            sockets.append(retry_transient(lambda: bind_tcp_socket(*tcp_addr), bind_retry_s))
        app = create_app(state)
        if metrics_addr:
            sockets.append(retry_transient(lambda: bind_tcp_socket(*metrics_host_port, "serve metrics"), bind_retry_s))
            app = with_metrics(app, metrics.registry, sockets[-1].getsockname()[:2])
            log.info("metrics on http://%s:%d/metrics", *sockets[-1].getsockname()[:2])
        tegrastats = start_tegrastats(metrics)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=shutdown_grace, **limits.uvicorn_options())
        server = _Server(config, state)

        def load():
            try:
                state.load(backend, threads, parallel, int(prefix_cache_mib * 2**20), precision)
            except BaseException as exc:  # reported after the server has stopped
                state.load_error, state.status = exc, "failed"
                server.should_exit = True

        threading.Thread(target=load, name="merino-edge-load", daemon=True).start()
        where = f"unix:{socket_path}" + (f" and http://{tcp_addr[0]}:{tcp_addr[1]}" if tcp_addr else "")
        log.info("serving %s on %s (loading the model)", state.model_id, where)
        server.run(sockets=sockets)
    finally:
        remove_socket(socket_path, inode)
        for sock in sockets:
            sock.close()
        if tegrastats is not None:
            tegrastats.stop()
        state.close()
    if state.load_error is not None:
        if isinstance(state.load_error, MerinoError):
            raise state.load_error
        raise RuntimeError("loading the model failed") from state.load_error
    log.info("stopped")
