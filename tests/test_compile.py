"""The cache engine under torch.compile: regional compilation of wan-tiny's blocks (aot_eager on CPU).

Dynamo must see no cache state inside a compiled block: one graph for every block, no graph
break (``fullgraph=True`` would raise on one), no recompile across steps, CFG branches,
strategies or jobs of the same shape, and the same numbers as eager.
"""

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from core.caching.registry import build_cache
from core.generation import run
from core.models import LoadedModel, load_model
from core.models.compile import compile_blocks

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
