"""The cache engine on real diffusers pipelines: wan-tiny, and ltx-tiny for a second family."""

from typing import Self

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from core.caching.registry import CACHES, build_cache
from core.contract.schedules import TEACACHE_RETENTION_STEPS as RETENTION_STEPS
from core.contract.strategies import CacheSpec
from core.errors import CacheConfigError
from core.generation import generate, run

SKIPPING = {
    "teacache": {"threshold": 0.4},
    "magcache": {},
    "easycache": {"threshold": 0.4, "warmup_steps": 2},
    "fbcache": {"threshold": 0.5},
    "dbcache": {"Fn_compute_blocks": 1, "Bn_compute_blocks": 1, "max_warmup_steps": 2, "residual_diff_threshold": 0.5},
    "taylorseer": {"warmup_steps": 2, "interval": 3},
}
NEVER = {
    "teacache": {"threshold": 0.0},
    "magcache": {"threshold": 0.0},
    "easycache": {"threshold": 0.0},
    "fbcache": {"threshold": 0.0},
    "dbcache": {"residual_diff_threshold": 0.0, "Fn_compute_blocks": 1},
    "taylorseer": {"interval": 1},
}


def ffn_of(block: torch.nn.Module) -> torch.nn.Module:
    return block.ffn if hasattr(block, "ffn") else block.ff


class Recorder:
    """Counts real block computations and keeps every transformer output, in call order."""

    def __init__(self, model) -> None:
        self.block_calls = 0
        self.outputs: list[torch.Tensor] = []
        blocks = model.family.blocks(model.transformer)
        self.layers = len(blocks)
        self.handles = [ffn_of(block).register_forward_hook(self._count) for block in blocks]
        self.handles.append(model.transformer.register_forward_hook(self._keep))

    def _count(self, *_: object) -> None:
        self.block_calls += 1

    def _keep(self, _module: object, _args: object, output: object) -> None:
        sample = output[0] if isinstance(output, tuple) else output.sample
        self.outputs.append(sample.clone())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        for handle in self.handles:
            handle.remove()


def call_order(report) -> list[bool]:
    """Decisions in transformer call order: step by step, branches in turn."""
    branches = list(report.branches.values())
    return [branch.schedule[step] == "C" for step in range(report.steps_total) for branch in branches]


@pytest.fixture(scope="module")
def baselines() -> dict:
    """Uncached runs per family, shared by the parametrised cases."""
    return {}


@pytest.mark.parametrize("family", ["wan", "ltx"])
@pytest.mark.parametrize("strategy", list(SKIPPING))
def test_strategy_skips_block_stack_calls_and_changes_only_skipped_steps(
    request, family, strategy, profiles, small_request, baselines
) -> None:
    model = request.getfixturevalue(f"{family}_tiny")
    if family not in baselines:
        with Recorder(model) as recorder:
            result = generate(model, small_request(family), profiles)
        baselines[family] = (result, recorder.outputs)
    baseline, baseline_outputs = baselines[family]

    with Recorder(model) as recorder:
        result = generate(
            model, small_request(family, cache={"strategy": strategy, "params": SKIPPING[strategy]}), profiles
        )
    report = result.cache
    computed, total = sum(call_order(report)), len(call_order(report))
    assert 0 < computed < total, report.branches
    start, end = CACHES[strategy](CacheSpec(strategy=strategy, params=SKIPPING[strategy]).parsed_params()).unit_blocks(
        recorder.layers
    )
    # Blocks outside the cached unit run on every call.
    assert recorder.block_calls == total * (recorder.layers - (end - start)) + computed * (end - start)
    assert report.ideal_speedup == pytest.approx(total / computed)

    first_skip = call_order(report).index(False)
    for index in range(first_skip):
        assert torch.equal(recorder.outputs[index], baseline_outputs[index])
    assert not torch.equal(recorder.outputs[first_skip], baseline_outputs[first_skip])
    assert not np.array_equal(result.frames, baseline.frames)


@pytest.mark.parametrize("strategy", list(NEVER))
def test_strategy_that_never_skips_matches_uncached_output(wan_tiny, profiles, small_request, strategy) -> None:
    never = NEVER[strategy]
    baseline = generate(wan_tiny, small_request(num_inference_steps=6), profiles)
    result = generate(
        wan_tiny, small_request(num_inference_steps=6, cache={"strategy": strategy, "params": never}), profiles
    )
    assert result.cache.ideal_speedup == 1.0
    assert np.array_equal(result.frames, baseline.frames)


def test_fbcache_equals_diffusers_first_block_cache(wan_tiny, profiles, small_request) -> None:
    from diffusers import FirstBlockCacheConfig

    threshold = SKIPPING["fbcache"]["threshold"]
    with Recorder(wan_tiny) as recorder:
        ours = generate(
            wan_tiny, small_request(cache={"strategy": "fbcache", "params": {"threshold": threshold}}), profiles
        )
    ours_outputs = recorder.outputs
    last_ffn = ffn_of(wan_tiny.family.blocks(wan_tiny.transformer)[-1])
    calls, tail_ran = [], []
    handles = [
        wan_tiny.transformer.register_forward_pre_hook(lambda *_: calls.append(len(calls))),
        last_ffn.register_forward_hook(lambda *_: tail_ran.append(len(calls) - 1)),
    ]
    wan_tiny.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    try:
        with Recorder(wan_tiny) as recorder:
            theirs = generate(wan_tiny, small_request(), profiles)
    finally:
        wan_tiny.transformer.disable_cache()
        for handle in handles:
            handle.remove()
    reference = [call in tail_ran for call in calls]
    assert call_order(ours.cache) == reference
    assert False in reference
    for mine, their in zip(ours_outputs, recorder.outputs, strict=True):
        torch.testing.assert_close(mine, their)
    np.testing.assert_allclose(ours.frames, theirs.frames, atol=1e-6)


def test_teacache_signal_is_fp32_on_a_bf16_model(wan_tiny) -> None:
    import copy

    half = copy.deepcopy(wan_tiny.transformer).to(torch.bfloat16)
    timesteps = torch.tensor([999.0, 500.0, 3.0])
    embeddings = wan_tiny.family.timestep_embeddings(half, timesteps)
    embedder = copy.deepcopy(half.condition_embedder).float()
    with torch.no_grad():
        temb = embedder.time_embedder(embedder.timesteps_proj(timesteps).float())
        expected = {"temb": temb, "timestep_proj": embedder.time_proj(embedder.act_fn(temb))}
    for name, tensor in embeddings.items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, expected[name])
    assert half.condition_embedder.time_proj.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("use_ret_steps", [True, False])
def test_teacache_schedule_equals_the_reference_loop(wan_tiny, profiles, small_request, use_ret_steps) -> None:
    params = {"threshold": 0.4, "use_ret_steps": use_ret_steps}
    result = generate(wan_tiny, small_request(cache={"strategy": "teacache", "params": params}), profiles)
    profile = profiles.get(result.cache.profile)

    # The reference's loop: calls counted across branches, one embedding per call, m_prev updated on every call.
    steps = 10
    pipe = wan_tiny.pipeline
    pipe.scheduler.set_timesteps(steps)
    embedder = wan_tiny.transformer.condition_embedder
    text = torch.zeros(1, 1, embedder.text_embedder.linear_1.in_features)
    coefficients = profile.teacache["timestep_proj" if use_ret_steps else "temb"]
    poly = np.poly1d(coefficients)
    ret_steps, cutoff = (RETENTION_STEPS * 2, steps * 2) if use_ret_steps else (2, steps * 2 - 2)
    accumulated, previous, decisions = [0.0, 0.0], [None, None], [[], []]
    with torch.no_grad():
        for count in range(steps * 2):
            temb, proj, _, _ = embedder(pipe.scheduler.timesteps[count // 2 : count // 2 + 1], text)
            compared = proj if use_ret_steps else temb
            parity = count % 2
            if count < ret_steps or count >= cutoff:
                compute, accumulated[parity] = True, 0.0
            else:
                accumulated[parity] += poly(
                    ((compared - previous[parity]).abs().mean() / previous[parity].abs().mean()).item()
                )
                compute = accumulated[parity] >= params["threshold"]
                if compute:
                    accumulated[parity] = 0.0
            previous[parity] = compared
            decisions[parity].append(compute)
    expected = ["".join("C" if d else "." for d in branch) for branch in decisions]
    assert [result.cache.branches[b].schedule for b in ("cond", "uncond")] == expected
    assert "." in expected[0]


def test_planned_timesteps_are_the_pipelines_own(ltx_tiny, profiles, small_request) -> None:
    request = small_request("ltx", cache={"strategy": "teacache"})
    shape = request.shape(ltx_tiny.family.rules, ltx_tiny.default_shape)
    cache = build_cache(request.cache, ltx_tiny.transformer, shape, profiles)
    seen = []
    handle = ltx_tiny.transformer.register_forward_pre_hook(
        lambda _m, _args, kwargs: seen.append(kwargs["timestep"][0].item()), with_kwargs=True
    )
    try:
        run(ltx_tiny, request, shape, cache)
    finally:
        handle.remove()
    assert seen == cache.plan.timesteps.tolist()


def test_cfg_branches_keep_their_own_residuals(wan_tiny, profiles, small_request) -> None:
    request = small_request(cache={"strategy": "magcache"})
    shape = request.shape(wan_tiny.family.rules, wan_tiny.default_shape)
    cache = build_cache(request.cache, wan_tiny.transformer, shape, profiles)
    run(wan_tiny, request, shape, cache)
    cond, uncond = cache.states["cond"], cache.states["uncond"]
    assert cond.residual is not None and uncond.residual is not None
    assert not torch.equal(cond.residual, uncond.residual)
    assert len(cond.decisions) == len(uncond.decisions) == 10


def test_without_guidance_there_is_one_branch(wan_tiny, profiles, small_request) -> None:
    result = generate(wan_tiny, small_request(guidance_scale=1.0, cache={"strategy": "magcache"}), profiles)
    assert list(result.cache.branches) == ["cond"]


def test_planned_schedule_is_known_before_denoising(wan_tiny, profiles, small_request) -> None:
    plans, steps = [], []
    result = generate(
        wan_tiny,
        small_request(cache={"strategy": "magcache"}),
        profiles,
        on_plan=plans.append,
        on_step=lambda progress: steps.append(progress),
    )
    assert len(plans) == 1 and plans[0] is not None
    assert {b: f.schedule for b, f in plans[0].branches.items()} == {
        b: f.schedule for b, f in result.cache.branches.items()
    }
    assert [p.step for p in steps] == list(range(1, 11))
    assert steps[-1].computed_calls + steps[-1].skipped_calls == 20


def test_report_figures_are_consistent(wan_tiny, profiles, small_request) -> None:
    result = generate(wan_tiny, small_request(cache={"strategy": "magcache"}, compare=True), profiles)
    report, fidelity = result.cache, result.fidelity
    computed = sum(b.computed for b in report.branches.values())
    skipped = sum(b.skipped for b in report.branches.values())
    assert report.scheduled_ahead and report.profile == "wan-tiny-128x128x17-20steps"
    assert report.estimated_full_seconds == pytest.approx(
        report.denoise_seconds + skipped * report.seconds_per_computed_call
    )
    assert report.speedup == pytest.approx(report.estimated_full_seconds / report.denoise_seconds)
    assert report.seconds_per_computed_step == pytest.approx(report.denoise_seconds / (computed / 2))
    assert skipped > 0 and 1.0 < report.speedup <= report.ideal_speedup
    assert 10 < fidelity.psnr < float("inf")
    assert 0 < fidelity.ssim < 1
    # Measured on the wall clock: how it compares with the estimate is bench/cache_speedup.py's figure.
    assert fidelity.measured_speedup > 0


def test_uncached_run_compared_with_itself_is_identical(wan_tiny, profiles, small_request) -> None:
    fidelity = generate(wan_tiny, small_request(num_inference_steps=4, compare=True), profiles).fidelity
    assert fidelity.psnr == float("inf")
    assert fidelity.ssim == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        (
            {"strategy": "magcache", "params": {"threshold": -0.1}},
            "params.threshold: Input should be greater than or equal to 0",
        ),
        (
            {"strategy": "magcache", "params": {"max_skip_steps": 0}},
            "params.max_skip_steps: Input should be greater than or equal to 1",
        ),
        (
            {"strategy": "magcache", "params": {"retention_ratio": 1.5}},
            "params.retention_ratio: Input should be less than 1",
        ),
        ({"strategy": "teacache", "params": {"thresh": 0.1}}, "params.thresh: Extra inputs are not permitted"),
        (
            {"strategy": "easycache", "params": {"threshold": "fast"}},
            "params.threshold: Input should be a valid number",
        ),
        ({"strategy": "fastcache"}, "unknown strategy 'fastcache'; known: none, teacache, magcache, easycache"),
        (
            {"strategy": "dbcache", "params": {"steps_computation_mask": [1, 2]}},
            "params.steps_computation_mask.1: Input should be 0 or 1",
        ),
        (
            {"strategy": "dbcache", "params": {"Fn_compute_blocks": 0}},
            "params.Fn_compute_blocks: Input should be greater than or equal to 1",
        ),
        (
            {"strategy": "taylorseer", "params": {"order": 5}},
            "params.order: Input should be less than or equal to 4",
        ),
        (
            {"strategy": "fbcache", "params": {"predictor": "linear"}},
            "params.predictor: Input should be 'reuse' or 'taylorseer'",
        ),
    ],
)
def test_bad_cache_settings_name_the_field_and_rule(cache, message) -> None:
    with pytest.raises(ValidationError) as error:
        CacheSpec(**cache)
    assert message in str(error.value)


def test_unknown_profile_is_named(wan_tiny, profiles, small_request) -> None:
    with pytest.raises(CacheConfigError, match=r"unknown profile 'nope'; known profiles: .*wan2\.1-t2v-1\.3b"):
        generate(wan_tiny, small_request(cache={"strategy": "magcache", "profile": "nope"}), profiles)


def test_profile_of_another_architecture_is_refused(wan_tiny, profiles, small_request) -> None:
    with pytest.raises(
        CacheConfigError, match=r"profile 'ltx-tiny-128x128x17-20steps' was calibrated for .*LTXVideoTransformer3DModel"
    ):
        generate(
            wan_tiny,
            small_request(cache={"strategy": "magcache", "profile": "ltx-tiny-128x128x17-20steps"}),
            profiles,
        )
