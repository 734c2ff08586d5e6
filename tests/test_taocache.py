"""TaoCache: its rule on hand-built tables, its prediction on hand-built outputs, the composite with an
early rule, calibration round-trip, and a wan-tiny run reported like every strategy's."""

import itertools
from pathlib import Path

import pytest
import torch

from core.caching.base import RunPlan
from core.caching.profiles import Profile, ProfileStore, TaoCacheTable
from core.caching.taocache import TaoCache
from core.calibration import calibrate
from core.contract.shapes import Shape
from core.contract.strategies import CacheSpec, TaoCacheParams
from core.errors import CacheConfigError
from core.generation import generate
from core.models.families import WanFamily

SHAPE = Shape(width=64, height=64, num_frames=9, num_inference_steps=8)


def plan(steps: int, branches: tuple[str, ...] = ("cond", "uncond")) -> RunPlan:
    return RunPlan(steps, branches, torch.zeros(steps), torch.nn.Identity(), WanFamily())


def profile(cosine: float, ratio: float, steps: int, magcache: list[float] | None = None) -> Profile:
    table = TaoCacheTable(cosine=[cosine] * steps, norm_ratio=[ratio] * steps)
    return Profile(
        name="hand-built",
        model="test",
        transformer={},
        width=64,
        height=64,
        num_frames=9,
        num_inference_steps=steps,
        guidance_scale=5.0,
        source="test",
        taocache={"cond": table, "uncond": table},
        magcache={"cond": magcache, "uncond": magcache} if magcache else None,
    )


@pytest.mark.parametrize(
    ("cosine", "ratio", "expected"),
    [
        # cos 1: the projection misses nothing (e = 0), so only K = 3 bounds a run of predictions.
        (1.0, 0.8, "CCCCCpppCp"),
        # cos .8 -> sqrt(1 - .64) = .6; ratio .5: G = .5, .25, .125 -> E = .3, .45 (predict), .525 (compute)
        (0.8, 0.5, "CCCCCppCpp"),
        # ratio 1: E = .6 >= .5 at once: every step computes.
        (0.8, 1.0, "CCCCCCCCCC"),
    ],
)
def test_rule_skips_exactly_where_the_accumulated_error_allows(cosine, ratio, expected) -> None:
    cache = TaoCache(TaoCacheParams(threshold=0.5, max_skip_steps=3, start_ratio=0.5), profile(cosine, ratio, 10))
    cache.prepare(plan(10))
    figures = cache.planned()
    for branch in ("cond", "uncond"):
        assert figures.branches[branch].rules == expected
        assert figures.branches[branch].schedule == expected.replace("p", ".")
    assert figures.ideal_speedup == pytest.approx(10 / expected.count("C"))


def test_first_two_steps_always_compute() -> None:
    cache = TaoCache(TaoCacheParams(threshold=10, max_skip_steps=100, start_ratio=0.0), profile(1.0, 0.5, 6))
    cache.prepare(plan(6))
    assert cache.planned().branches["cond"].rules == "CCpppp"


def test_prediction_extrapolates_the_last_delta_by_the_calibrated_coefficient() -> None:
    # Computed outputs 1, 3, 4 (deltas 2, then 1); cos 1, ratio .5: predicted deltas .5, .25, .125.
    cache = TaoCache(TaoCacheParams(threshold=0.5, max_skip_steps=3, start_ratio=0.5), profile(1.0, 0.5, 6))
    cache.prepare(plan(6, ("cond",)))
    computed_outputs = {0: 1.0, 1: 3.0, 2: 4.0}
    used = []
    for step in range(6):
        state = cache.state_for("cond")
        unit_input = torch.zeros(3)
        out = cache.enter(state, unit_input)
        if out is None:
            out = torch.full((3,), computed_outputs[step])
        cache.exit(state, out)
        used.append(out[0].item())
    assert used == [1.0, 3.0, 4.0, 4.5, 4.75, 4.875]
    report = cache.report(1.0)
    assert report.scheduled_ahead
    assert report.branches["cond"].rules == "CCCppp"
    assert (report.branches["cond"].computed, report.branches["cond"].skipped) == (3, 3)


def test_composite_reports_which_rule_skipped_each_step() -> None:
    # MagCache (defaults: retention .2 of 40 calls = 8 calls = steps 0-3; K 2) on a flat table decides
    # steps 0-9; TaoCache (cos 1, K 3) steps 10-19.
    cache = TaoCache(
        TaoCacheParams(threshold=0.5, max_skip_steps=3, start_ratio=0.5, early="magcache"),
        profile(1.0, 0.5, 20, magcache=[1.0] * 20),
    )
    cache.prepare(plan(20))
    for branch in ("cond", "uncond"):
        assert cache.planned().branches[branch].rules == "CCCCmmCmmC" + "pppCpppCpp"


def test_composite_reuses_the_residual_early_and_predicts_late() -> None:
    cache = TaoCache(
        TaoCacheParams(threshold=0.5, max_skip_steps=3, start_ratio=0.5, early="magcache"),
        profile(1.0, 0.5, 10, magcache=[1.0] * 10),
    )
    cache.prepare(plan(10, ("cond",)))
    # MagCache alone: retention int(10 * .2) = 2 steps, then K 2: "CC..C..C.." on steps 0-4 -> "CCmmC".
    assert cache.planned().branches["cond"].rules == "CCmmCpppCp"
    used = []
    for step in range(10):
        state = cache.state_for("cond")
        unit_input = torch.full((2,), float(step))
        out = cache.enter(state, unit_input)
        if out is None:
            out = unit_input * 2 + 1  # the unit: residual x + 1
        cache.exit(state, out)
        used.append(out[0].item())
    # steps 2, 3 reuse the residual of step 1 (2): x + 2; step 4 computes 9, its delta from step 3's 5 is 4;
    # steps 5-7 predict 9 + 2, + 1, + .5; step 8 computes 17; step 9 predicts 17 + (17 - 12.5) / 2.
    assert used == [1.0, 3.0, 4.0, 5.0, 9.0, 11.0, 12.0, 12.5, 17.0, 19.25]


def test_missing_tables_are_a_clear_error() -> None:
    without_early = profile(1.0, 0.5, 10)
    cache = TaoCache(TaoCacheParams(early="magcache"), without_early)
    with pytest.raises(CacheConfigError, match="no magcache data"):
        cache.prepare(plan(10))
    cache = TaoCache(TaoCacheParams(), without_early)
    with pytest.raises(CacheConfigError, match="no TaoCache table for branch 'other'"):
        cache.prepare(plan(10, ("other",)))


def test_params_are_validated_by_the_contract() -> None:
    with pytest.raises(ValueError, match="early"):
        CacheSpec(strategy="taocache", params={"early": "easycache"})
    with pytest.raises(ValueError, match="start_ratio"):
        CacheSpec(strategy="taocache", params={"start_ratio": 1.0})


def test_calibration_round_trip(wan_tiny, small_request, tmp_path: Path) -> None:
    profile_ = calibrate(wan_tiny, SHAPE, ["a boat on a river"], name="tao-round-trip")
    # Measured here on our own: the block-stack outputs of an uncached run, per branch in call order.
    outputs: list[torch.Tensor] = []
    handle = wan_tiny.transformer.blocks[-1].register_forward_hook(
        lambda _m, _a, out: outputs.append(out.detach().float().flatten().clone())
    )
    try:
        request = small_request(
            prompt="a boat on a river",
            width=SHAPE.width,
            height=SHAPE.height,
            num_frames=SHAPE.num_frames,
            num_inference_steps=SHAPE.num_inference_steps,
            seed=0,
        )
        generate(wan_tiny, request, ProfileStore(tmp_path / "none"))
    finally:
        handle.remove()
    for index, branch in enumerate(("cond", "uncond")):
        series = outputs[index::2]
        deltas = [b - a for a, b in itertools.pairwise(series)]
        cosines = [1.0, 1.0] + [
            torch.nn.functional.cosine_similarity(d, p, dim=0).item() for p, d in itertools.pairwise(deltas)
        ]
        ratios = [1.0, 1.0] + [(d.norm() / p.norm()).item() for p, d in itertools.pairwise(deltas)]
        table = profile_.taocache[branch]
        assert table.cosine == pytest.approx(cosines, abs=1e-4)
        assert table.norm_ratio == pytest.approx(ratios, rel=1e-4)

    store = ProfileStore(tmp_path / "profiles")
    store.save(profile_)
    assert store.get("tao-round-trip").taocache == profile_.taocache


def test_wan_tiny_run_is_reported_like_every_strategy(wan_tiny, profiles, small_request) -> None:
    # Threshold 2: on random weights consecutive deltas are far from collinear (late cosines .1-.5),
    # so the default 0.5 predicts nothing here.
    for params in ({"threshold": 2}, {"threshold": 2, "early": "magcache"}, {"threshold": 2, "early": "teacache"}):
        request = small_request(cache={"strategy": "taocache", "params": params}, compare=True)
        plans = []
        result = generate(wan_tiny, request, profiles, on_plan=plans.append)
        report = result.cache
        assert report.strategy == "taocache" and report.scheduled_ahead
        assert report.profile == "wan-tiny-128x128x17-20steps"
        assert report.params["early"] == params.get("early", "none")
        for branch in ("cond", "uncond"):
            figures = report.branches[branch]
            assert figures.schedule == plans[0].branches[branch].schedule
            assert figures.rules.replace("p", ".").replace("m", ".").replace("t", ".") == figures.schedule
            assert figures.computed + figures.skipped == 10
            assert "p" in figures.rules
        assert report.ideal_speedup > 1
        assert result.fidelity is not None and result.fidelity.psnr > 10
        assert result.frames.shape == (9, 64, 64, 3)


def test_taocache_job_through_the_api(service) -> None:
    submitted = service.submit(cache={"strategy": "taocache", "params": {"threshold": 2, "early": "magcache"}})
    job = service.wait(submitted["id"])
    assert job["status"] == "succeeded", job["error"]
    metrics = job["metrics"]
    assert metrics["strategy"] == "taocache"
    assert metrics["params"]["early"] == "magcache"
    assert metrics["profile"] == "wan-tiny-128x128x17-20steps"
    assert set(metrics["branches"]) == {"cond", "uncond"}
    for figures in metrics["branches"].values():
        assert len(figures["rules"]) == 6 and set(figures["rules"]) <= {"C", "m", "p"}
        assert figures["schedule"] == figures["rules"].replace("m", ".").replace("p", ".")
    skipped = sum(b["skipped"] for b in metrics["branches"].values())
    assert job["progress"]["skipped_calls"] == skipped > 0
    assert metrics["ideal_speedup"] > 1
    # Known at submit, without the engine: the schedule the worker ran, the early rule's part included.
    assert submitted["expected"]["branches"] == {
        name: {key: branch[key] for key in ("computed", "skipped", "schedule")}
        for name, branch in metrics["branches"].items()
    }
