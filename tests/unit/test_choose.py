import pytest

from shipyard.errors import UsageError
from shipyard.optimizing.choose import choose
from shipyard.optimizing.evaluate import Measured


def m(name: str, acc: float, size: int, p50: float, thr: float, invariant: bool | None = True) -> Measured:
    diff = None if invariant is None else 0.0 if invariant else 0.01
    return Measured(name, acc, size, p50, thr, batch_max_diff=diff, batch_invariant=invariant)


def test_fastest_within_half_a_point_wins() -> None:
    vs = [m("fp32", 0.900, 400, 0.010, 600), m("int8-dynamic", 0.880, 100, 0.010, 2000),
          m("int8-static", 0.897, 110, 0.012, 1500)]
    chosen, reason = choose(vs)
    assert chosen.name == "int8-static"  # int8-dynamic lost 2 points
    assert "int8-dynamic lost more accuracy" in reason


def test_near_ties_go_to_the_smaller_file() -> None:
    vs = [m("fp32", 0.9, 400, 0.01, 1000), m("int8-dynamic", 0.9, 100, 0.01, 1960),
          m("int8-static", 0.9, 110, 0.01, 2000)]
    chosen, reason = choose(vs)
    assert chosen.name == "int8-dynamic" and "smallest file wins" in reason


def test_latency_objective_ranks_by_p50() -> None:
    vs = [m("fp32", 0.9, 400, 0.010, 1000), m("int8-dynamic", 0.9, 100, 0.020, 3000)]
    assert choose(vs, "latency")[0].name == "fp32"
    assert choose(vs, "throughput")[0].name == "int8-dynamic"


def test_fp32_is_required_and_objective_checked() -> None:
    with pytest.raises(UsageError, match="fp32"):
        choose([m("int8-static", 0.9, 1, 1, 1)])
    with pytest.raises(UsageError, match="--optimize-for 'size'"):
        choose([m("fp32", 0.9, 1, 1, 1)], "size")


def test_only_batch_invariant_variants_are_chosen_by_default() -> None:
    vs = [m("fp32", 0.9, 400, 0.01, 1000), m("int8-dynamic", 0.9, 100, 0.01, 3000, invariant=False),
          m("int8-static", 0.9, 110, 0.01, 2000)]
    chosen, reason = choose(vs)
    assert chosen.name == "int8-static"
    assert "answer the same inside a batch" in reason and "int8-dynamic differs by up to 0.01 inside a batch" in reason


def test_a_variant_not_measured_for_invariance_is_not_proven_invariant() -> None:
    vs = [m("fp32", 0.9, 400, 0.01, 1000), m("int8-dynamic", 0.9, 100, 0.01, 3000, invariant=None)]
    chosen, reason = choose(vs)
    assert chosen.name == "fp32" and "int8-dynamic not measured" in reason


def test_allowing_batch_variance_lets_the_fastest_win_and_says_so() -> None:
    vs = [m("fp32", 0.9, 400, 0.01, 1000), m("int8-dynamic", 0.9, 100, 0.01, 3000, invariant=False)]
    chosen, reason = choose(vs, allow_batch_variance=True)
    assert chosen.name == "int8-dynamic"
    assert "batch-variant ones allowed" in reason and "servers refuse to batch it" in reason


def test_no_invariant_variant_is_an_error_naming_the_option() -> None:
    vs = [m("fp32", 0.9, 400, 0.01, 1000, invariant=False)]
    with pytest.raises(UsageError, match=r"fp32 differs by up to 0\.01.*--allow-batch-variance"):
        choose(vs)
    assert choose(vs, allow_batch_variance=True)[0].name == "fp32"
