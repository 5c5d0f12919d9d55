"""Dynamic batching with back-pressure, on the event loop.

Why batch a model that costs 11 µs per instance? Because calling ONNX Runtime releases the GIL,
and on a busy server every release hands the GIL to the HTTP server's threads and costs a
round of thread switches that dwarfs the model (measured: an inline call per request serves
5,700 req/s, one call per batch of whatever is waiting 8,400; benchmarks/serve_bench.py). So
requests for one model version queue here and run as one call of up to `max_batch_size`
instances, after waiting at most `max_delay_ms` for company (0: batch what is already waiting
when the loop comes round, which adds no latency).

The queue is bounded in instances: a request that does not fit is refused at once (503 with
Retry-After), so memory never grows under overload. Every request carries a deadline; work
whose deadline has passed when its batch forms is dropped and answered 504.

Small models run inline on the loop (a thread hop costs more than the batch); a model whose
measured batch takes longer than `INLINE_LIMIT_S` runs on one worker thread so the loop keeps
accepting requests meanwhile.

A version whose answers depend on their batch-mates (int8-dynamic: its activation scale comes from
the whole batch) is never batched silently: `admit` refuses to load it, or, with
`unbatched_if_variant`, runs it unbatched (`optimizing/invariance.py`)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.errors import BadRequest, DeadlineExceeded, Overloaded, ShipyardError, UsageError
from shipyard.optimizing import invariance

if TYPE_CHECKING:
    from shipyard.serve.runtime import ModelRuntime

log = logging.getLogger("shipyard.serve")
INLINE_LIMIT_S = 0.002


@dataclass(frozen=True)
class BatchConfig:
    """The knobs that interact, validated together (`checked`). `max_batch_size` 1 turns batching
    off: each request runs inline in its handler."""

    max_batch_size: int = 64
    max_delay_ms: float = 0.0
    max_queue: int = 1024  # instances waiting, all requests together
    timeout_ms: float = 10_000.0  # per request, from arrival to the start of its batch
    concurrency: int = 1024  # requests the HTTP server admits at once per worker
    latency_target_ms: float | None = None  # adapt the delay online (max_delay_ms caps it)
    unbatched_if_variant: bool = False  # a batch-variant version runs unbatched instead of being refused

    def checked(self) -> BatchConfig:
        problems = []
        if self.latency_target_ms is not None:
            t = self.latency_target_ms
            if not (math.isfinite(t) and t > 0):
                problems.append(f"latency_target_ms must be > 0 (got {t})")
            elif self.max_batch_size < 2:
                problems.append("latency_target_ms adapts the batch delay: it needs batching (max_batch_size ≥ 2)")
            elif self.max_delay_ms >= t:
                problems.append(f"max_delay_ms ({self.max_delay_ms:g}) caps the adapted delay and must be below "
                                f"latency_target_ms ({t:g})")
            elif self.timeout_ms < t:
                problems.append(f"timeout_ms ({self.timeout_ms:g}) must be at least latency_target_ms ({t:g})")
        if self.max_batch_size < 1:
            problems.append(f"max_batch_size must be ≥ 1 (got {self.max_batch_size})")
        if not (math.isfinite(self.max_delay_ms) and self.max_delay_ms >= 0):
            problems.append(f"max_delay_ms must be ≥ 0 (got {self.max_delay_ms})")
        if not (math.isfinite(self.timeout_ms) and self.timeout_ms > 0):
            problems.append(f"timeout_ms must be > 0 (got {self.timeout_ms})")
        elif self.max_delay_ms >= self.timeout_ms:
            problems.append(f"max_delay_ms ({self.max_delay_ms:g}) must be below timeout_ms ({self.timeout_ms:g}): "
                            "every batched request would time out waiting")
        if self.max_queue < self.max_batch_size:
            problems.append(f"max_queue ({self.max_queue}) must hold at least one full batch "
                            f"(max_batch_size {self.max_batch_size})")
        if self.concurrency < 1:
            problems.append(f"concurrency must be ≥ 1 (got {self.concurrency})")
        elif self.max_batch_size > 1 and self.concurrency < self.max_batch_size and self.max_delay_ms > 0 \
                and self.latency_target_ms is None:
            problems.append(f"max_batch_size ({self.max_batch_size}) is above concurrency ({self.concurrency}): "
                            f"single-instance batches can never fill, so every one would wait the full "
                            f"max_delay_ms ({self.max_delay_ms:g})")
        if problems:
            raise UsageError("batching: " + "; ".join(problems))
        return self

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "enabled": self.enabled}


class BatchVariance(ShipyardError):
    """This server batches, and a version's answers depend on their batch-mates (HTTP 409)."""

    http_status = 409


def admit(rt: ModelRuntime, config: BatchConfig) -> bool:
    """Whether `rt` may be batched: its bundle says it is batch-invariant, or (a bundle that does
    not say) a probe at load finds it so. A variant one raises `BatchVariance`, or with
    `unbatched_if_variant` returns False: the caller serves it unbatched. The finding goes into
    `rt.serving["batching"]` (model metadata)."""
    meta = rt.bundle.meta
    known = meta.batch_invariant
    if known is not None:
        info: dict[str, Any] = {"invariant": known, "max_diff": meta.batch_max_diff, "measured": "by optimize"}
    else:
        diff = invariance.probe(rt.predict, rt.inputs[rt.onnx_input].shape, max_batch=config.max_batch_size)
        info = {"invariant": invariance.is_invariant(diff), "max_diff": diff,
                "measured": "at load (the bundle does not say)"}
    batching = rt.serving.setdefault("batching", config.to_dict())
    batching["invariance"] = info
    if info["invariant"]:
        return True
    diff = info["max_diff"]
    why = (f"{rt.name} version {rt.version} ({meta.variant or 'its model'}) answers differently inside a batch "
           f"than alone (probabilities differ by up to {diff:.2g}" if diff is not None else
           f"{rt.name} version {rt.version} ({meta.variant or 'its model'}) is not proven to answer the same "
           "inside a batch as alone (")
    why += f", measured {info['measured']}; invariant means ≤ {invariance.TOLERANCE:g})"
    if not config.unbatched_if_variant:
        raise BatchVariance(f"{why}: refusing to batch it. Serve it with --unbatched-if-variant (this version "
                            "unbatched) or --max-batch-size 1 (nothing batched), or re-optimize without "
                            "--allow-batch-variance")
    log.warning("%s: serving it unbatched (--unbatched-if-variant)", why)
    batching.update(enabled=False, unbatched=why)
    return False


class DelayController:
    """The latency-target mode: adapts the batch delay to hold p99 under the target at the
    highest throughput it can. Additive increase, multiplicative decrease, once per window: when
    the window's p99 is over the target the delay halves; when it has room (under 80% of the
    target) and batches leave seats empty, the delay grows by one step (a longer wait fills
    batches, and fuller batches cost less CPU per request); otherwise it holds. `clock` is
    injectable: the logic is tested without the wall clock."""

    def __init__(self, target_ms: float, cap_ms: float, seats: int, *, clock: Callable[[], float] = time.monotonic,
                 window_s: float = 1.0, min_samples: int = 50) -> None:
        self.target_s = target_ms / 1000
        self.cap_s = (cap_ms if cap_ms > 0 else target_ms / 2) / 1000
        self.step_s = max(self.cap_s / 20, 50e-6)
        self.seats = seats
        self.clock = clock
        self.window_s = window_s
        self.min_samples = min_samples
        self.delay_s = 0.0
        self.latencies: list[float] = []
        self.fill: list[float] = []
        self.window_start = clock()
        self.decisions: deque[dict[str, Any]] = deque(maxlen=100)
        self.counts = {"raise": 0, "cut": 0, "hold": 0}

    def observe(self, latencies: list[float], batch_size: int) -> None:
        self.latencies.extend(latencies)
        self.fill.append(min(1.0, batch_size / self.seats))

    def tick(self) -> float | None:
        """At the end of a window: the new delay in seconds, or None when it is not time yet."""
        now = self.clock()
        if now - self.window_start < self.window_s or len(self.latencies) < self.min_samples:
            return None
        p99 = float(np.quantile(np.asarray(self.latencies), 0.99))
        fill = float(np.mean(self.fill)) if self.fill else 0.0
        before = self.delay_s
        if p99 > self.target_s:
            action = "cut"
            self.delay_s = before / 2 if before / 2 >= self.step_s else 0.0
        elif p99 < 0.8 * self.target_s and fill < 0.95 and before < self.cap_s:
            action = "raise"
            self.delay_s = min(self.cap_s, before + self.step_s)
        else:
            action = "hold"
        self.counts[action] += 1
        decision = {"action": action, "p99_ms": round(p99 * 1000, 3), "batch_fill": round(fill, 3),
                    "delay_ms": round(self.delay_s * 1000, 3), "samples": len(self.latencies)}
        self.decisions.append(decision)
        if action != "hold" or (p99 > self.target_s and before == 0):
            level = logging.WARNING if p99 > self.target_s and before == 0 else logging.INFO
            log.log(level, "latency target %.1f ms: p99 %.2f ms, batches %.0f%% full → %s delay to %.3f ms%s",
                    self.target_s * 1000, p99 * 1000, fill * 100, action, self.delay_s * 1000,
                    " (over target with no delay: the server is at capacity)" if level == logging.WARNING else "")
        self.latencies.clear()
        self.fill.clear()
        self.window_start = now
        return self.delay_s


@dataclass(slots=True)
class _Item:
    features: np.ndarray
    future: asyncio.Future[np.ndarray]
    deadline: float
    tag: Any = None  # the caller's label for this request (its id), handed to `on_results`


class Batcher:
    """The queue and batch runner of one model version. `run(features) -> probabilities` is the
    model; `clock` is injectable so the timing logic is tested without the wall clock."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], config: BatchConfig, *,
                 clock: Callable[[], float] = time.monotonic, inline: bool = True,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_results: Callable[[list[Any], list[int], np.ndarray, np.ndarray], None] | None = None) -> None:
        self.run = run
        self.on_batch = on_batch  # (instances, seconds in the model): the metrics hook
        # (tags, instances per request, features, outputs) of each batch that ran: the prediction
        # log's hook, so it gets a few large arrays instead of one small one per request
        self.on_results = on_results
        self.config = config
        self.clock = clock
        self.inline = inline
        self.delay_s = config.max_delay_ms / 1000
        self.timeout_s = config.timeout_ms / 1000
        self.pending: deque[_Item] = deque()
        self.queued = 0  # instances in `pending`
        self.busy = False  # a batch is running on the worker thread
        self.scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        # `scheduled` waits out the delay (call_at), not just the next loop step; a flag, since
        # uvloop's timer handles are not asyncio.TimerHandle (a full batch then waited the delay)
        self.timed = False
        self.per_instance_s = 0.0  # moving average, for Retry-After
        self.stats = {"requests": 0, "batches": 0, "instances": 0, "rejected": 0, "expired": 0}
        self._pool: ThreadPoolExecutor | None = None
        self.controller: DelayController | None = None
        self.exported_decisions: dict[str, int] = {}  # the controller's counts already in the metrics
        if config.latency_target_ms is not None:
            self.controller = DelayController(config.latency_target_ms, config.max_delay_ms,
                                              min(config.max_batch_size, config.concurrency), clock=clock)
            self.delay_s = 0.0

    # -- submitting --------------------------------------------------------------------------
    async def infer(self, features: np.ndarray, tag: Any = None) -> np.ndarray:
        n = len(features)
        if n > self.config.max_queue:
            raise BadRequest(f"the request holds {n} instances; this server queues at most "
                             f"{self.config.max_queue} (split it, or raise --max-queue)")
        if self.queued + n > self.config.max_queue:
            self.stats["rejected"] += 1
            raise Overloaded(f"the queue is full ({self.queued} of {self.config.max_queue} instances waiting); "
                             "retry shortly", retry_after=self.retry_after())
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self.pending.append(_Item(features, future, self.clock() + self.timeout_s, tag))
        self.queued += n
        self.stats["requests"] += 1
        if not self.busy:
            if self.queued >= self.config.max_batch_size or self.delay_s == 0:
                if self.scheduled is None or self.timed:
                    self._schedule_now(loop)
            elif self.scheduled is None:
                self.scheduled, self.timed = loop.call_at(loop.time() + self.delay_s, self._flush), True
        return await future

    def retry_after(self) -> int:
        """Seconds until the queue has drained, as estimated from the recent cost per instance."""
        return max(1, math.ceil(self.queued * self.per_instance_s))

    def _schedule_now(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.scheduled is not None:
            self.scheduled.cancel()
        self.scheduled, self.timed = loop.call_soon(self._flush), False

    # -- running -----------------------------------------------------------------------------
    def _take(self) -> list[_Item]:
        """The next batch: up to max_batch_size instances in arrival order (a request larger than
        that runs alone), skipping requests whose deadline passed or whose client left."""
        batch: list[_Item] = []
        size = 0
        now = self.clock()
        while self.pending:
            item = self.pending[0]
            n = len(item.features)
            if batch and size + n > self.config.max_batch_size:
                break
            self.pending.popleft()
            self.queued -= n
            if item.future.done():  # cancelled: the client went away
                continue
            if item.deadline < now:
                self.stats["expired"] += 1
                item.future.set_exception(DeadlineExceeded(
                    f"the request waited {self.config.timeout_ms:g} ms in the queue without being served"))
                continue
            batch.append(item)
            size += n
        return batch

    def _flush(self) -> None:
        self.scheduled, self.timed = None, False
        batch = self._take()
        if not batch:
            return
        features = batch[0].features if len(batch) == 1 else np.concatenate([i.features for i in batch])
        if self.inline:
            t0 = time.perf_counter()
            try:
                out = self.run(features)
            except Exception as e:  # noqa: BLE001 - the requests get the error, the server goes on
                self._fail(batch, e)
            else:
                self._deliver(batch, out, time.perf_counter() - t0, features)
            self._next()
            return
        self.busy = True
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="shipyard-batch")
        t0 = time.perf_counter()
        job = loop.run_in_executor(self._pool, self.run, features)
        job.add_done_callback(lambda f: self._finished(batch, f, time.perf_counter() - t0, features))

    def _finished(self, batch: list[_Item], job: asyncio.Future[np.ndarray], elapsed: float,
                  features: np.ndarray) -> None:
        self.busy = False
        if (e := job.exception()) is not None:
            self._fail(batch, e)
        else:
            self._deliver(batch, job.result(), elapsed, features)
        self._next()

    def _next(self) -> None:
        if self.pending and self.scheduled is None:
            loop = asyncio.get_running_loop()
            if self.queued >= self.config.max_batch_size or self.delay_s == 0:
                self.scheduled, self.timed = loop.call_soon(self._flush), False
            else:  # wait out the delay of the oldest waiting request, not a fresh one
                oldest = self.pending[0].deadline - self.timeout_s
                self.scheduled = loop.call_at(loop.time() + max(0.0, oldest + self.delay_s - self.clock()),
                                              self._flush)
                self.timed = True

    def _deliver(self, batch: list[_Item], out: np.ndarray, elapsed: float, features: np.ndarray) -> None:
        n = len(out)
        self.stats["batches"] += 1
        self.stats["instances"] += n
        if self.on_batch is not None:
            self.on_batch(n, elapsed)
        if self.on_results is not None:
            self.on_results([i.tag for i in batch], [len(i.features) for i in batch], features, out)
        if self.controller is not None:
            now = self.clock()
            self.controller.observe([now - (i.deadline - self.timeout_s) for i in batch], n)
            if (delay := self.controller.tick()) is not None:
                self.delay_s = delay
        self.per_instance_s = 0.9 * self.per_instance_s + 0.1 * (elapsed / n) if self.per_instance_s else elapsed / n
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(out)
            return
        start = 0
        for item in batch:
            end = start + len(item.features)
            if not item.future.done():
                item.future.set_result(out[start:end])
            start = end

    @staticmethod
    def _fail(batch: list[_Item], e: BaseException) -> None:
        log.error("a batch of %d request(s) failed: %s", len(batch), e)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(e)

    # -- draining ----------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self.pending and not self.busy

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
