"""Dynamic batching: batch formation, the bounded queue, deadlines, failures, and the knobs
validated together. Deadlines run on an injected clock, never the wall clock."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from shipyard.errors import BadRequest, DeadlineExceeded, Overloaded, UsageError
from shipyard.serve.batching import BatchConfig, Batcher, DelayController


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Model:
    """Records the batch sizes it is called with; answers each row with its own first value."""

    def __init__(self, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.fail = fail

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.sizes.append(len(x))
        if self.fail:
            raise RuntimeError("the model broke")
        return x[:, :1] * 2


def rows(start: int, n: int = 1) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32).reshape(n, 1).repeat(3, axis=1)


async def gather(batcher: Batcher, requests: list[np.ndarray]) -> list[Any]:
    tasks = [asyncio.ensure_future(batcher.infer(r)) for r in requests]
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_waiting_requests_run_as_batches_of_at_most_max_batch_size_and_each_gets_its_rows() -> None:
    model = Model()
    b = Batcher(model, BatchConfig(max_batch_size=4, max_queue=64))
    out = asyncio.run(gather(b, [rows(i) for i in range(10)]))
    assert model.sizes == [4, 4, 2]
    assert [float(o[0, 0]) for o in out] == [2.0 * i for i in range(10)]
    assert b.stats == {"requests": 10, "batches": 3, "instances": 10, "rejected": 0, "expired": 0}
    assert b.idle and b.queued == 0


def test_a_request_larger_than_a_batch_runs_alone_and_order_is_kept() -> None:
    model = Model()
    b = Batcher(model, BatchConfig(max_batch_size=4, max_queue=64))
    out = asyncio.run(gather(b, [rows(0, 2), rows(10, 7), rows(20, 1)]))
    assert model.sizes == [2, 7, 1]
    assert out[1].shape == (7, 1) and float(out[1][6, 0]) == 32.0


def test_a_full_queue_refuses_at_once_with_retry_after_and_does_not_grow() -> None:
    model = Model()
    b = Batcher(model, BatchConfig(max_batch_size=4, max_queue=8))
    out = asyncio.run(gather(b, [rows(i, 3) for i in range(4)]))
    assert [type(o).__name__ for o in out] == ["ndarray", "ndarray", "Overloaded", "Overloaded"]
    assert all(isinstance(o, Overloaded) and o.retry_after >= 1 and o.http_status == 503 for o in out[2:])
    assert b.stats["rejected"] == 2 and model.sizes == [3, 3]


def test_a_request_that_can_never_fit_the_queue_is_a_bad_request() -> None:
    b = Batcher(Model(), BatchConfig(max_batch_size=4, max_queue=8))
    with pytest.raises(BadRequest, match="holds 9 instances.*at most 8"):
        asyncio.run(b.infer(rows(0, 9)))


def test_work_past_its_deadline_is_dropped_with_504() -> None:
    clock = Clock()
    model = Model()
    b = Batcher(model, BatchConfig(max_batch_size=8, max_delay_ms=20, timeout_ms=100, max_queue=64, concurrency=64),
                clock=clock)

    async def scenario() -> list[Any]:
        late = [asyncio.ensure_future(b.infer(rows(i))) for i in range(3)]
        await asyncio.sleep(0)  # the three are queued; their batch waits out max_delay_ms
        clock.now += 0.5  # half a second passes on the injected clock: past their 100 ms deadline
        fresh = asyncio.ensure_future(b.infer(rows(9)))
        return await asyncio.gather(*late, fresh, return_exceptions=True)

    out = asyncio.run(scenario())
    assert [type(o) for o in out[:3]] == [DeadlineExceeded] * 3 and out[0].http_status == 504
    assert float(out[3][0, 0]) == 18.0
    assert model.sizes == [1]  # the expired work never reached the model
    assert b.stats["expired"] == 3


def test_a_failing_model_fails_its_batch_only() -> None:
    broken = Model(fail=True)
    b = Batcher(broken, BatchConfig(max_batch_size=2, max_queue=8))
    out = asyncio.run(gather(b, [rows(i) for i in range(3)]))
    assert all(isinstance(o, RuntimeError) for o in out) and broken.sizes == [2, 1]
    assert b.idle


def test_thread_mode_runs_batches_off_the_loop() -> None:
    model = Model()
    b = Batcher(model, BatchConfig(max_batch_size=4, max_queue=64), inline=False)
    out = asyncio.run(gather(b, [rows(i) for i in range(6)]))
    b.close()
    assert [float(o[0, 0]) for o in out] == [2.0 * i for i in range(6)] and sum(model.sizes) == 6
    assert b.idle


def test_retry_after_follows_the_measured_cost_per_instance() -> None:
    b = Batcher(Model(), BatchConfig())
    b.per_instance_s = 0.01
    b.queued = 500
    assert b.retry_after() == 5
    b.queued = 1
    assert b.retry_after() == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_batch_size": 0}, "max_batch_size must be ≥ 1"),
    ({"max_delay_ms": -1}, "max_delay_ms must be ≥ 0"),
    ({"timeout_ms": 0}, "timeout_ms must be > 0"),
    ({"max_delay_ms": 50, "timeout_ms": 20}, "must be below timeout_ms"),
    ({"max_batch_size": 64, "max_queue": 32}, "must hold at least one full batch"),
    ({"max_batch_size": 64, "concurrency": 8, "max_delay_ms": 5}, "can never fill"),
    ({"concurrency": 0}, "concurrency must be ≥ 1"),
])
def test_knobs_are_validated_together(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        BatchConfig(**kwargs).checked()


def test_effective_values_are_reported() -> None:
    cfg = BatchConfig(max_batch_size=1).checked()
    assert cfg.to_dict()["enabled"] is False
    assert BatchConfig().checked().to_dict() == {"max_batch_size": 64, "max_delay_ms": 0.0, "max_queue": 1024,
                                                 "timeout_ms": 10000.0, "concurrency": 1024, "latency_target_ms": None,
                                                 "unbatched_if_variant": False,
                                                 "enabled": True}


# -- the latency-target mode ---------------------------------------------------------------
def window(ctl: DelayController, clock: Clock, latency_ms: float, batch: int, n: int = 100) -> float | None:
    for _ in range(n // 10):
        ctl.observe([latency_ms / 1000] * 10, batch)
    clock.now += 1.0
    return ctl.tick()


def test_the_delay_grows_while_p99_has_room_and_batches_have_empty_seats() -> None:
    clock = Clock()
    ctl = DelayController(target_ms=20, cap_ms=0, seats=64, clock=clock)
    delays = [window(ctl, clock, latency_ms=5, batch=8) for _ in range(5)]
    assert delays == pytest.approx([0.0005 * k for k in range(1, 6)])  # cap 10 ms, step cap/20
    assert ctl.counts == {"raise": 5, "cut": 0, "hold": 0}
    assert ctl.decisions[-1]["action"] == "raise" and ctl.decisions[-1]["p99_ms"] == 5.0


def test_the_delay_halves_when_p99_is_over_the_target_and_never_goes_below_zero() -> None:
    clock = Clock()
    ctl = DelayController(target_ms=20, cap_ms=8, seats=64, clock=clock)
    ctl.delay_s = 0.008
    assert window(ctl, clock, latency_ms=25, batch=8) == pytest.approx(0.004)
    assert window(ctl, clock, latency_ms=25, batch=8) == pytest.approx(0.002)
    for _ in range(5):
        window(ctl, clock, latency_ms=25, batch=8)
    assert ctl.delay_s == 0.0 and ctl.counts["cut"] == 7


def test_the_delay_holds_near_the_target_when_batches_are_full_or_at_the_cap() -> None:
    clock = Clock()
    ctl = DelayController(target_ms=20, cap_ms=2, seats=64, clock=clock)
    assert window(ctl, clock, latency_ms=18, batch=8) == 0.0  # 90% of target: no room
    assert window(ctl, clock, latency_ms=5, batch=64) == 0.0  # full batches: waiting buys nothing
    ctl.delay_s = 0.002
    assert window(ctl, clock, latency_ms=5, batch=8) == 0.002  # at the cap
    assert ctl.counts == {"raise": 0, "cut": 0, "hold": 3}


def test_no_decision_before_the_window_ends_or_with_too_few_samples() -> None:
    clock = Clock()
    ctl = DelayController(target_ms=20, cap_ms=0, seats=64, clock=clock)
    ctl.observe([0.001] * 100, 8)
    clock.now += 0.5
    assert ctl.tick() is None  # half a window
    clock.now += 0.6
    ctl2 = DelayController(target_ms=20, cap_ms=0, seats=64, clock=clock)
    ctl2.observe([0.001] * 10, 8)
    clock.now += 2
    assert ctl2.tick() is None  # ten samples say nothing about a p99
    assert ctl.tick() is not None


def test_the_batcher_applies_the_controllers_delay() -> None:
    clock = Clock()
    model = Model()
    b = Batcher(model, BatchConfig(max_batch_size=64, latency_target_ms=50, max_queue=1024), clock=clock)
    assert b.controller is not None
    b.controller.window_s = 0.0
    b.controller.min_samples = 10
    asyncio.run(gather(b, [rows(i) for i in range(20)]))  # answered at once on the frozen clock: p99 0
    assert b.delay_s > 0 and b.controller.counts["raise"] >= 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"latency_target_ms": 0}, "latency_target_ms must be > 0"),
    ({"latency_target_ms": 10, "max_batch_size": 1, "max_queue": 8}, "needs batching"),
    ({"latency_target_ms": 10, "max_delay_ms": 10}, "caps the adapted delay"),
    ({"latency_target_ms": 100, "timeout_ms": 50}, "must be at least latency_target_ms"),
])
def test_latency_target_is_validated_with_the_other_knobs(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        BatchConfig(**kwargs).checked()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_full_batch_runs_at_once_whatever_the_delay_on_either_event_loop(loop: str) -> None:
    """The server runs on uvloop when installed (granian's and uvicorn's "auto"), whose timer
    handles are not asyncio's: a full batch must still cancel the delay's timer and run."""
    import uvloop

    model = Model()
    b = Batcher(model, BatchConfig(max_batch_size=4, max_delay_ms=60_000, max_queue=64))

    async def full() -> tuple[list[Any], float]:
        t0 = asyncio.get_running_loop().time()
        out = await asyncio.wait_for(gather(b, [rows(i) for i in range(4)]), 30)  # 60 s if it waited the delay
        return out, asyncio.get_running_loop().time() - t0

    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        out, _ = runner.run(full())
    assert model.sizes == [4] and [float(o[0, 0]) for o in out] == [0.0, 2.0, 4.0, 6.0]
