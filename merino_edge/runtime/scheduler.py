"""The bounded request queue in front of the generator: requests are served in turn.

One generation runs at a time, in arrival order (FIFO), on one worker thread;
up to `max_waiting` more requests wait behind it and any beyond that are
refused at once (the server answers 429).  Served-in-turn rather than batched
because on an edge board one request already keeps the memory bandwidth busy
during decode (the bottleneck of a small model), a single KV cache at max
context is what the board's memory is sized for, and a per-request TTFT stays
predictable; the queue depth and wait-time metrics show when a board needs help.

The worker hands `Piece`s from `Generator.stream` to the request's asyncio
queue as they come.  Cancelling a job (client disconnect, shutdown) removes it
from the waiting line, or makes the running generation stop before its next
token (`SamplingParams.should_stop`), which frees the slot at once.

Whoever ends a request counts its outcome in the metrics: the worker for jobs it
ran, `cancel` for jobs that never started, the HTTP layer for refusals.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field

from merino_edge.errors import MerinoError
from merino_edge.runtime.api_schema import APIError
from merino_edge.runtime.metrics import ServerMetrics


@dataclass
class Done:
    """The last event of a job: why it ended, how many tokens, and its timings in seconds."""

    finish_reason: str  # "stop" | "length" | "cancelled"
    completion_tokens: int
    timings: dict = field(default_factory=dict)


@dataclass
class Failed:
    """The job ended with an error (an APIError for the client, or a server bug)."""

    error: BaseException


class Job:
    """One request's generation: what to generate, and the events it produced so far."""

    def __init__(self, prompt, sampling: dict, prompt_tokens: int):
        self.prompt = prompt  # str or list of token ids
        self.sampling = sampling  # SamplingParams keywords (max_tokens, temperature, stop, ...)
        self.prompt_tokens = prompt_tokens
        self.arrived = time.perf_counter()
        self.cancelled = threading.Event()
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()

    def push(self, event) -> None:
        """Deliver an event to the request's coroutine (called from the worker thread)."""
        with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown): nobody listens any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class GenerationQueue:
    """Served in turn: one worker thread, FIFO, at most `max_waiting` waiting requests."""

    def __init__(self, generator, sampling_params_type, metrics: ServerMetrics, max_waiting: int = 32):
        if max_waiting < 0:
            raise MerinoError(f"queue size must be >= 0, got {max_waiting}")
        self.generator = generator
        self.sampling_params_type = sampling_params_type
        self.metrics = metrics
        self.max_waiting = max_waiting
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="merino-edge-generator", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return 0 if self._running is None else 1

    def submit(self, job: Job) -> None:
        """Put a job in line; APIError 429 when the line is full, 503 when shutting down."""
        with self._cond:
            if self._closing:
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
            # An idle worker is about to take the head of the line: it may hold one more than max_waiting.
            if len(self._waiting) >= self.max_waiting + (self._running is None):
                raise APIError(
                    429, f"the request queue is full ({self.max_waiting} waiting); retry later", type="rate_limit_error", code="queue_full"
                )
            self._waiting.append(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: drop it from the line, or stop its running generation before the next token."""
        with self._cond:
            if job.cancelled.is_set():
                return
            job.cancelled.set()
            if job in self._waiting:
                self._waiting.remove(job)
                self.metrics.queue_depth.set(len(self._waiting))
                self.metrics.outcome("cancelled")
                job.push(Done("cancelled", 0))

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, end waiting ones (503), cancel the running one, and stop the worker."""
        with self._cond:
            self._closing = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            self.metrics.queue_depth.set(0)
            if self._running is not None:
                self._running.cancelled.set()
            self._cond.notify_all()
        for job in waiting:
            job.cancelled.set()
            self.metrics.outcome("cancelled")
            job.push(Failed(APIError(503, "the server is shutting down", type="server_error", code="shutting_down")))
        self._thread.join(timeout)

    # ------------------------------------------------------------ worker side

    def _next(self) -> Job | None:
        with self._cond:
            while not self._waiting and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            job = self._waiting.popleft()
            self._running = job
            self.metrics.queue_depth.set(len(self._waiting))
            self.metrics.running.set(1)
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._generate(job)
            finally:
                with self._cond:
                    self._running = None
                    self.metrics.running.set(0)

    def _generate(self, job: Job) -> None:
        m = self.metrics
        started = time.perf_counter()
        m.queue_wait.observe(started - job.arrived)
        first = last = None
        tokens = 0
        finish = None
        try:
            params = self.sampling_params_type(**job.sampling, should_stop=job.cancelled.is_set)
            stream = self.generator.stream(job.prompt, params)
            try:
                m.prompt_tokens.inc(job.prompt_tokens)
                for piece in stream:
                    now = time.perf_counter()
                    n = len(piece.token_ids)
                    if n:
                        if first is None:
                            first = now
                            m.ttft.observe(now - job.arrived)
                        else:
                            for _ in range(n):
                                m.inter_token.observe((now - last) / n)
                        last = now
                        tokens += n
                        m.generation_tokens.inc(n)
                    job.push(piece)
                    finish = piece.finish_reason or finish
                    if job.cancelled.is_set():
                        break
            finally:
                stream.close()
        except MerinoError as exc:  # the generator refused the input: the client's problem
            m.outcome("invalid")
            job.push(Failed(APIError(400, str(exc))))
            return
        except Exception as exc:  # a bug: the HTTP layer answers 500 and logs it
            m.outcome("failed")
            job.push(Failed(exc))
            return
        end = time.perf_counter()
        if job.cancelled.is_set() or finish in (None, "cancelled"):
            finish = "cancelled"
            m.outcome("cancelled")
        else:
            m.outcome("completed")
            m.request_duration.observe(end - job.arrived)
        timings = {
            "queue_s": started - job.arrived,
            "ttft_s": (first - job.arrived) if first is not None else None,
            "decode_s": (last - first) if first is not None else 0.0,
            "total_s": end - job.arrived,
        }
        job.push(Done(finish, tokens, timings))
