"""Chipmunk's sparse deltas: the layers' rule against a dense computation written out here, the whole
model with nothing sparse against the dense model, and the composition with a step cache."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward

from core.caching.base import RunPlan
from core.caching.chipmunk import Chipmunk, voxel_layout
from core.contract.strategies import ChipmunkParams
from core.errors import CacheConfigError
from core.generation import generate
from core.models.families import HunyuanFamily, WanFamily

# 2 latent frames of 2x3 tokens, voxels of 1x2x2: voxel 0 = tokens {0, 1, 3, 4}, voxel 1 = {2, 5}, ...
GRID = (2, 2, 3)
VOXEL = (1, 2, 2)
TOKENS = math.prod(GRID)


def layer_cache(**params: object) -> Chipmunk:
    """A Chipmunk run on one branch, its tokens laid out on GRID: what one layer sees."""
    cache = Chipmunk(ChipmunkParams(voxel_shape=VOXEL, attn_local_voxels=0, attn_random_keys=0, **params))
    cache.prepare(RunPlan(4, ("cond",), torch.zeros(4), torch.nn.Identity(), WanFamily()))
    cache.use_grid(GRID, torch.device("cpu"))
    cache.state_for("cond")
    return cache


def at_step(cache: Chipmunk, step: int) -> None:
    cache.current.step = step


def qkv(seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, 2, TOKENS, 8, generator=generator) for _ in range(3))


def voxel_of(token: int) -> int:
    return int(voxel_layout(GRID, VOXEL, 0, torch.device("cpu")).of_token[token])


def restricted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Each query's attention over its voxel's chosen keys, written out query by query."""
    out = torch.zeros_like(q)
    scale = 1 / math.sqrt(q.shape[-1])
    for head in range(q.shape[1]):
        for query in range(TOKENS):
            keys = chosen[0, head, voxel_of(query)].nonzero().flatten()
            weights = ((q[0, head, query] @ k[0, head, keys].T) * scale).softmax(dim=-1)
            out[0, head, query] = weights @ v[0, head, keys]
    return out


def test_attention_recomputes_exactly_the_top_keys_of_each_voxel() -> None:
    cache = layer_cache(attn_top_keys=0.25)
    (q0, k0, v0), (q1, k1, v1), (q2, k2, v2) = qkv(0), qkv(1), qkv(2)
    scale = 1 / math.sqrt(8)

    at_step(cache, 0)
    torch.testing.assert_close(cache.attend(3, q0, k0, v0, None), F.scaled_dot_product_attention(q0, k0, v0))
    at_step(cache, 1)
    dense = cache.attend(3, q1, k1, v1, None)
    assert torch.equal(dense, F.scaled_dot_product_attention(q1, k1, v1))

    # The paper's criterion: per voxel, the column sums of step 1's attention normalised with step 0's lse.
    lse0 = ((q0 @ k0.transpose(-1, -2)) * scale).logsumexp(dim=-1)
    probabilities = ((q1 @ k1.transpose(-1, -2)) * scale - lse0[..., None]).exp()
    deltas = cache.attention[(3, "cond")]
    count = round(0.25 * TOKENS)
    for head in range(2):
        for voxel in range(deltas.chosen.shape[2]):
            members = [t for t in range(TOKENS) if voxel_of(t) == voxel]
            sums = probabilities[0, head, members].sum(dim=0)
            expected = set(sums.topk(count).indices.tolist())
            assert set(deltas.chosen[0, head, voxel].nonzero().flatten().tolist()) == expected

    # A sparse step: the cached difference plus the chosen columns recomputed.
    at_step(cache, 2)
    sparse = cache.attend(3, q2, k2, v2, None)
    expected = dense - restricted(q1, k1, v1, deltas.chosen) + restricted(q2, k2, v2, deltas.chosen)
    torch.testing.assert_close(sparse, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sparse, F.scaled_dot_product_attention(q2, k2, v2), atol=1e-3)


def test_attention_with_every_key_chosen_is_dense() -> None:
    cache = layer_cache(attn_top_keys=1.0)
    for step, seed in enumerate((0, 1, 2, 3)):
        at_step(cache, step)
        q, k, v = qkv(seed)
        out = cache.attend(2, q, k, v, None)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_local_window_and_random_keys_are_added_to_the_top_keys() -> None:
    layout = voxel_layout((4, 4, 4), (2, 2, 2), 1, torch.device("cpu"))
    # A window of one voxel: each voxel's own tokens.
    assert torch.equal(layout.window, layout.of_token[None, :] == torch.arange(layout.count)[:, None])
    wide = voxel_layout((6, 2, 2), (2, 2, 2), 3, torch.device("cpu"))
    # Three voxels along frames; the first and last windows are shifted inward: every voxel sees all three.
    assert wide.window.all()

    cache = Chipmunk(ChipmunkParams(voxel_shape=VOXEL, attn_local_voxels=1, attn_random_keys=0.5, attn_top_keys=0.0))
    cache.prepare(RunPlan(4, ("cond",), torch.zeros(4), torch.nn.Identity(), WanFamily()))
    cache.use_grid(GRID, torch.device("cpu"))
    cache.state_for("cond")
    for step in (0, 1):
        at_step(cache, step)
        cache.attend(2, *qkv(step), None)
    chosen = cache.attention[(2, "cond")].chosen
    own = cache.voxels.window
    assert (chosen[0, 0] >= own).all()
    random = chosen[0, 0] & ~own
    assert 0 < random.sum() < (~own).sum()


def test_mlp_recomputes_exactly_the_columns_whose_voxel_mean_moved_most() -> None:
    torch.manual_seed(0)
    mlp = FeedForward(8, inner_dim=16, activation_fn="gelu-approximate").eval()
    cache = layer_cache(mlp_top_keys=0.25, mlp_random_keys=0)
    x0, x1 = torch.randn(1, TOKENS, 8), torch.randn(1, TOKENS, 8)
    fc1, act, fc2 = mlp.net[0].proj, mlp.net[0].gelu, mlp.net[2]

    at_step(cache, 0)
    assert torch.equal(cache.feed_forward(5, mlp, x0), mlp(x0))
    at_step(cache, 1)
    out = cache.feed_forward(5, mlp, x1)

    layout = cache.voxels
    activations = act(fc1(x0)).clone()
    for voxel in range(layout.count):
        members = (layout.of_token == voxel).nonzero().flatten()
        moved = (fc1(x1[0, members].mean(dim=0)) - fc1(x0[0, members]).mean(dim=0)).abs()
        columns = moved.topk(round(0.25 * 16)).indices
        assert set(cache.mlp[(5, "cond")].chosen[0, voxel].nonzero().flatten().tolist()) == set(columns.tolist())
        activations[0, members[:, None], columns] = act(fc1(x1))[0, members[:, None], columns]
    torch.testing.assert_close(out, fc2(activations), atol=1e-5, rtol=1e-5)


def test_mlp_with_every_column_chosen_is_dense() -> None:
    torch.manual_seed(1)
    mlp = FeedForward(8, inner_dim=16, activation_fn="gelu-approximate").eval()
    cache = layer_cache(mlp_top_keys=1.0)
    for step in range(3):
        at_step(cache, step)
        x = torch.randn(1, TOKENS, 8)
        out = cache.feed_forward(4, mlp, x)
    torch.testing.assert_close(out, mlp(x), atol=1e-5, rtol=1e-5)


def chipmunk_request(small_request, steps: int = 5, **params: object):
    return small_request(
        width=32,
        height=32,
        num_frames=9,
        num_inference_steps=steps,
        cache={"strategy": "chipmunk", "params": {"voxel_shape": [1, 2, 2], **params}},
    )


def test_nothing_sparse_is_the_dense_model(wan_tiny, profiles, small_request) -> None:
    dense = generate(wan_tiny, small_request(width=32, height=32, num_frames=9, num_inference_steps=5), profiles)
    every_step_dense = chipmunk_request(
        small_request, attn_full_step_every=1, mlp_top_keys=0.3, mlp_full_step_every=1, first_dense_layers=0
    )
    result = generate(wan_tiny, every_step_dense, profiles)
    np.testing.assert_array_equal(result.frames, dense.frames)
    assert {branch.rules for branch in result.cache.branches.values()} == {"DDDDD"}

    every_column = chipmunk_request(small_request, attn_top_keys=1.0, mlp_top_keys=1.0, first_dense_layers=0)
    result = generate(wan_tiny, every_column, profiles)
    np.testing.assert_allclose(result.frames, dense.frames, atol=1e-5)
    assert {branch.rules for branch in result.cache.branches.values()} == {"DDsss"}

    sparse = generate(wan_tiny, chipmunk_request(small_request, mlp_top_keys=0.3), profiles)
    assert np.abs(sparse.frames - dense.frames).max() > 1e-4
    assert sparse.cache.ideal_speedup == 1.0


def test_step_cache_reuses_the_steps_its_rule_reuses(wan_tiny, profiles, small_request) -> None:
    magcache = small_request(
        width=32, height=32, num_frames=9, num_inference_steps=8, cache={"strategy": "magcache", "params": {}}
    )
    alone = generate(wan_tiny, magcache, profiles)
    composed = generate(wan_tiny, chipmunk_request(small_request, steps=8, step_cache="magcache"), profiles)
    assert composed.cache.profile == alone.cache.profile
    for name, branch in composed.cache.branches.items():
        assert branch.schedule == alone.cache.branches[name].schedule
        assert "." in branch.schedule
        assert branch.rules == "".join(
            ("D" if step < 2 else "s") if mark == "C" else "m" for step, mark in enumerate(branch.schedule)
        )


def test_families_without_sparse_layers_are_refused() -> None:
    hunyuan = torch.nn.Module()
    hunyuan.transformer_blocks, hunyuan.single_transformer_blocks = torch.nn.ModuleList(), torch.nn.ModuleList()
    cache = Chipmunk(ChipmunkParams())
    cache.prepare(RunPlan(4, ("cond",), torch.zeros(4), hunyuan, HunyuanFamily()))
    with (
        pytest.raises(CacheConfigError, match="chipmunk: not available for the hunyuan family"),
        cache.inside_blocks([]),
    ):
        pass
