"""The cache engine under torch.compile: regional compilation of wan-tiny's blocks (aot_eager on CPU).

Dynamo must see no cache state inside a compiled block: one graph for every block, no graph
break (``fullgraph=True`` would raise on one), no recompile across steps, CFG branches,
strategies or jobs of the same shape, and the same numbers as eager. A worker's warm-up compiles
every shape it serves before its first job; with inductor the kernels stay on disk for the next
process.
"""

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from core.caching.registry import build_cache
from core.contract.experts import HIGH_NOISE, LOW_NOISE
from core.generation import generate, run
from core.models import LoadedModel, load_model
from core.models.compile import compile_and_warm_up, compile_blocks

STRATEGIES = [
    ("none", {}),
    ("teacache", {"threshold": 0.4}),
    ("magcache", {"retention_ratio": 0.0}),
    ("easycache", {"threshold": 0.5, "warmup_steps": 1}),
    ("fbcache", {"threshold": 0.5}),
    (
        "dbcache",
        {"Fn_compute_blocks": 1, "Bn_compute_blocks": 1, "max_warmup_steps": 1, "residual_diff_threshold": 0.5},
    ),
    ("taylorseer", {"warmup_steps": 2, "interval": 2}),
    # Runs its blocks eager, with its own layers swapped in; the strategies after it must find the graph unchanged.
    ("chipmunk", {"voxel_shape": [1, 2, 2], "mlp_top_keys": 0.3}),
    ("magcache", {"retention_ratio": 0.0, "predictor": "taylorseer"}),
]


@pytest.fixture(scope="module")
def compiled(settings) -> Iterator[LoadedModel]:
    """A wan-tiny of its own (the session's stays eager), its blocks compiled."""
    model = load_model("wan-tiny", settings)
    torch._dynamo.reset()
    counters.clear()
    yield model
    torch._dynamo.reset()


def request(small_request, strategy: str, params: dict, steps: int = 4):
    return small_request(
        width=32, height=32, num_frames=5, num_inference_steps=steps, cache={"strategy": strategy, "params": params}
    )


def generate_with(model: LoadedModel, profiles, req):
    shape = req.shape(model.family.rules, model.default_shape)
    return run(model, req, shape, build_cache(req.cache, model.transformer, shape, profiles))


def test_strategies_compile_once_without_breaks_and_match_eager(compiled, profiles, small_request) -> None:
    eager = [generate_with(compiled, profiles, request(small_request, *case)) for case in STRATEGIES]
    assert any(result.cache.ideal_speedup > 1 for result in eager)

    compile_blocks(compiled, "aot_eager")
    first = generate_with(compiled, profiles, request(small_request, "none", {}))
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]

    # Every later call, of any strategy or step count at this shape, must reuse that graph.
    with torch.compiler.set_stance("fail_on_recompile"):
        results = [generate_with(compiled, profiles, request(small_request, *case)) for case in STRATEGIES]
        again = generate_with(compiled, profiles, request(small_request, "none", {}, steps=3))
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]
    assert again.cache.steps_total == 3

    np.testing.assert_allclose(first.frames, eager[0].frames, atol=1e-5)
    for (strategy, _), before, after in zip(STRATEGIES, eager, results, strict=True):
        assert after.cache.branches == before.cache.branches, strategy
        np.testing.assert_allclose(after.frames, before.frames, atol=1e-5, err_msg=strategy)


def test_warm_up_compiles_every_served_shape_and_jobs_then_never_recompile(settings, profiles, small_request) -> None:
    served = settings.model_copy(update={"compile_backend": "aot_eager", "compile_shapes": "32x32x5"})
    model = load_model("wan-tiny", served)
    torch._dynamo.reset()
    counters.clear()
    try:
        compile_and_warm_up(model, served)
        assert model.compiled
        # The default shape's graph, then the second shape's (dynamic from then on).
        assert counters["stats"]["unique_graphs"] == 2
        with torch.compiler.set_stance("fail_on_recompile"):
            for width, height, frames, case, steps in (
                (128, 128, 17, ("none", {}), 2),
                (32, 32, 5, ("magcache", {"retention_ratio": 0.0}), 4),
                (32, 32, 5, ("fbcache", {"threshold": 0.5}), 3),
                (48, 32, 9, ("none", {}), 2),  # a shape not warmed up: the dynamic graph serves it
            ):
                request = small_request(
                    width=width,
                    height=height,
                    num_frames=frames,
                    num_inference_steps=steps,
                    cache={"strategy": case[0], "params": case[1]},
                )
                generate_with(model, profiles, request)
        assert counters["stats"]["unique_graphs"] == 2
        assert not counters["graph_break"]
    finally:
        torch._dynamo.reset()


def test_both_experts_of_wan22_compile_at_warm_up_and_match_eager(settings, profiles, small_request) -> None:
    served = settings.model_copy(update={"compile_backend": "aot_eager"})
    model = load_model("wan2.2-t2v-a14b-tiny", served)
    job = small_request(
        width=32, height=32, num_frames=5, num_inference_steps=6, cache={"strategy": "magcache", "params": {}}
    )
    eager = generate(model, job, profiles)
    torch._dynamo.reset()
    counters.clear()
    try:
        compile_and_warm_up(model, served.model_copy(update={"compile_shapes": "32x32x5"}))
        for _, transformer in model.experts:
            assert all(block._compiled_call_impl is not None for block in transformer.blocks)
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 2  # one per expert at least
        with torch.compiler.set_stance("fail_on_recompile"):
            compiled = generate(model, job, profiles)
        assert counters["stats"]["unique_graphs"] == graphs and not counters["graph_break"]
        assert {name.split("/")[0] for name in compiled.cache.branches} == {HIGH_NOISE, LOW_NOISE}
        np.testing.assert_allclose(compiled.frames, eager.frames, atol=1e-5)
    finally:
        torch._dynamo.reset()


PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from torch._dynamo.utils import counters
    from core.models.compile import CompileCache

    cache = CompileCache(Path(sys.argv[1]), "probe")
    cache.open()
    torch.compile(lambda x: (x.sin() * 2 + 1).relu(), backend="inductor")(torch.randn(8))
    cache.save()
    print(json.dumps(dict(counters["inductor"])))
    """
)


def test_compiled_kernels_outlive_the_process(tmp_path: Path) -> None:
    """What a worker compiles is loaded, not compiled again, by the next worker on the same home, or by one given
    only the mega-cache file. (A small function stands in for the blocks, whose inductor compile on CPU takes
    a minute.)"""
    env = {name: value for name, value in os.environ.items() if name != "TORCHINDUCTOR_CACHE_DIR"}

    def compile_in_a_new_process(directory: Path) -> dict[str, int]:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(directory)], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = tmp_path / "first"
    assert compile_in_a_new_process(first) == {"fxgraph_cache_miss": 1}
    assert (first / "inductor").is_dir() and (first / "probe.bin").is_file()
    again = compile_in_a_new_process(first)
    assert again.get("fxgraph_cache_hit") == 1 and "fxgraph_cache_miss" not in again

    given_the_file = tmp_path / "elsewhere"
    given_the_file.mkdir()
    (given_the_file / "probe.bin").write_bytes((first / "probe.bin").read_bytes())
    loaded = compile_in_a_new_process(given_the_file)
    assert loaded.get("fxgraph_cache_hit") == 1 and "fxgraph_cache_miss" not in loaded
