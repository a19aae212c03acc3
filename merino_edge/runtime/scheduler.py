"""The request queue in front of the generator: continuous batching over `parallel` slots.

One worker thread drives a `ContinuousBatch` (generator.py).  At every step
boundary it first admits waiting requests in arrival order (FIFO) while slots
are free; each is prefilled alone (after the longest cached prefix) and
streams its first token at once, so a new request waits for at most the step
in progress and the prefills ahead of it.  Then one graph call advances every
running sequence by a token.  A sequence that finishes, hits a stop, or is
cancelled leaves in that step and frees its slot.  Beyond `parallel` running,
up to `max_waiting` requests wait; any more are refused at once (the server
answers 429).  `parallel=1` is the served-in-turn mode.

The worker hands `Piece`s to each request's asyncio queue as they come.
Cancelling a job (client disconnect, shutdown) removes it from the waiting
line, or makes its sequence leave at the next step boundary
(`SamplingParams.should_stop`).

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

import psutil

from merino_edge.errors import MerinoError
from merino_edge.runtime.api_schema import APIError
from merino_edge.runtime.generator import ContinuousBatch
from merino_edge.runtime.metrics import ServerMetrics
from merino_edge.runtime.prefix_cache import PrefixCache

DEFAULT_PREFIX_CACHE_BYTES = 64 << 20
PARALLEL_MEMORY_SHARE = 0.25  # of the memory available at start, for the default --parallel's KV cache
DEFAULT_MAX_PARALLEL = 8


def slot_bytes(backend, arch) -> int:
    """KV memory one slot takes: its buffers (past and present, or the one an append-form cache grows in) at the backend's full context."""
    return backend.kv_buffers * backend.max_context * arch.kv_cache_bytes_per_token(backend.kv_value_bytes)


def default_parallel(backend, arch, available_bytes: int | None = None) -> int:
    """How many sequences to decode together by default: as many slots as a quarter of the
    available memory holds at full context, at least 1, at most 8 and the backend's max batch."""
    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    fits = int(available * PARALLEL_MEMORY_SHARE // slot_bytes(backend, arch))
    return max(1, min(fits, DEFAULT_MAX_PARALLEL, backend.max_batch))


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
        self.started = self.first = self.last = None  # perf_counter times, set by the worker
        self.tokens = 0

    def push(self, event) -> None:
        """Deliver an event to the request's coroutine (called from the worker thread)."""
        with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown): nobody listens any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class GenerationQueue:
    """Continuous batching: one worker thread, up to `parallel` running, FIFO, at most `max_waiting` waiting."""

    def __init__(self, generator, sampling_params_type, metrics: ServerMetrics, max_waiting: int = 32, *, parallel: int = 1,
                 prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES):
        if max_waiting < 0:
            raise MerinoError(f"queue size must be >= 0, got {max_waiting}")
        self.generator = generator
        self.sampling_params_type = sampling_params_type
        self.metrics = metrics
        self.max_waiting = max_waiting
        self.parallel = parallel
        cache = PrefixCache(prefix_cache_bytes, on_lookup=metrics.prefix_lookup) if prefix_cache_bytes > 0 else None
        self._batch = ContinuousBatch(generator, parallel, cache)  # the worker's alone once it starts
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: dict[int, Job] = {}  # id(row) -> job
        self._closing = False
        self._cond = threading.Condition()
        metrics.kv_slots.set(parallel)
        if cache is not None:
            metrics.prefix_bytes.set_function(lambda: cache.bytes)
        self._thread = threading.Thread(target=self._work, name="merino-edge-generator", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def submit(self, job: Job) -> None:
        """Put a job in line; APIError 429 when the line is full, 503 when shutting down."""
        with self._cond:
            if self._closing:
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
            # Free slots are about to take the head of the line: it may hold that many more than max_waiting.
            if len(self._waiting) >= self.max_waiting + max(0, self.parallel - len(self._running)):
                raise APIError(
                    429, f"the request queue is full ({self.max_waiting} waiting); retry later", type="rate_limit_error", code="queue_full"
                )
            self._waiting.append(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: drop it from the line, or make its sequence leave at the next step."""
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
        """Refuse new jobs, end waiting ones (503), cancel the running ones, and stop the worker."""
        with self._cond:
            self._closing = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            self.metrics.queue_depth.set(0)
            for job in self._running.values():
                job.cancelled.set()
            self._cond.notify_all()
        for job in waiting:
            job.cancelled.set()
            self.metrics.outcome("cancelled")
            job.push(Failed(APIError(503, "the server is shutting down", type="server_error", code="shutting_down")))
        self._thread.join(timeout)

    # ------------------------------------------------------------ worker side

    def _admit(self) -> list[Job] | None:
        """Jobs to start now (FIFO, as many as slots are free); waits while there is nothing to do; None to stop."""
        with self._cond:
            while not self._waiting and not self._running and not self._closing:
                self._cond.wait()
            if self._closing and not self._running:
                return None
            jobs = []
            while self._waiting and len(self._running) + len(jobs) < self.parallel:
                jobs.append(self._waiting.popleft())
            self.metrics.queue_depth.set(len(self._waiting))
            return jobs

    def _work(self) -> None:
        while (jobs := self._admit()) is not None:
            for job in jobs:
                self._start(job)
            if self._batch.rows:
                self._step()

    def _start(self, job: Job) -> None:
        m = self.metrics
        job.started = time.perf_counter()
        m.queue_wait.observe(job.started - job.arrived)
        try:
            params = self.sampling_params_type(**job.sampling, should_stop=job.cancelled.is_set)
            if job.cancelled.is_set():
                self._finish(job, "cancelled")
                return
            row, piece = self._batch.add(job.prompt, params)
        except MerinoError as exc:  # the generator refused the input: the client's problem
            m.outcome("invalid")
            job.push(Failed(APIError(400, str(exc))))
            return
        except Exception as exc:  # a bug: the HTTP layer answers 500 and logs it
            m.outcome("failed")
            job.push(Failed(exc))
            return
        m.prompt_tokens.inc(job.prompt_tokens)
        with self._cond:
            self._running[id(row)] = job
            self._set_running()
        self._deliver(row, piece)

    def _step(self) -> None:
        self.metrics.batch_size.observe(len(self._batch.rows))
        try:
            pieces = self._batch.step()
        except Exception as exc:  # a bug: every running request fails, the batch starts afresh
            self._batch.clear()
            with self._cond:
                jobs, self._running = list(self._running.values()), {}
                self._set_running()
            for job in jobs:
                self.metrics.outcome("failed")
                job.push(Failed(exc))
            return
        for row, piece in pieces:
            self._deliver(row, piece)

    def _deliver(self, row, piece) -> None:
        job = self._running[id(row)]
        m = self.metrics
        now = time.perf_counter()
        n = len(piece.token_ids)
        if n:
            if job.first is None:
                job.first = now
                m.ttft.observe(now - job.arrived)
            else:
                for _ in range(n):
                    m.inter_token.observe((now - job.last) / n)
            job.last = now
            job.tokens += n
            m.generation_tokens.inc(n)
        job.push(piece)
        if piece.finish_reason is not None:
            with self._cond:
                del self._running[id(row)]
                self._set_running()
            self._finish(job, piece.finish_reason)

    def _set_running(self) -> None:
        self.metrics.running.set(len(self._running))
        self.metrics.kv_slots_in_use.set(len(self._running))

    def _finish(self, job: Job, finish: str) -> None:
        m = self.metrics
        end = time.perf_counter()
        if job.cancelled.is_set() or finish == "cancelled":
            finish = "cancelled"
            m.outcome("cancelled")
        else:
            m.outcome("completed")
            m.request_duration.observe(end - job.arrived)
        timings = {
            "queue_s": job.started - job.arrived,
            "ttft_s": (job.first - job.arrived) if job.first is not None else None,
            "decode_s": (job.last - job.first) if job.first is not None else 0.0,
            "total_s": end - job.arrived,
        }
        job.push(Done(finish, job.tokens, timings))
