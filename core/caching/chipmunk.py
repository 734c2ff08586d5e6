"""Chipmunk: inside every block, recompute only the attention keys and MLP columns that changed most, as
sparse deltas against outputs cached at the last dense step.

Reference: Silveria, Govande, Fu, "Chipmunk: Training-Free Acceleration of Diffusion Transformers with
Dynamic Column-Sparse Deltas", arXiv 2506.03275, and its code, github.com/sandyresearch/chipmunk
(``src/chipmunk/modules/attn.py``, ``modules/mlp.py``, ``util/layer_counter.py``, the kernels' semantics
from ``csrc/``, the Wan2.1 settings from ``examples/wan/chipmunk-config.yml``). This is the PyTorch
reference path: it computes what the rule computes, densely (masks instead of gathered columns), so it
runs anywhere and saves no time; the speed comes from the reference's Hopper kernels (ThunderKittens
and Triton: column-sparse attention and MLP that gather the chosen columns into dense tiles), which are
not part of skipstep. Per CFG branch and per block from ``first_dense_layers`` on:

Attention (the block's self-attention; ``q, k, v`` as SDPA receives them). A dense step is step 0, step 1
and every ``attn_full_step_every``-th step (or the steps of ``attn_full_steps``); the others are sparse.

- Step 0: the dense output ``o``; the log-sum-exp ``lse`` of each query's logits is kept.
- A later dense step: ``o`` dense. Each query group (a voxel of ``voxel_shape`` latent tokens; the
  kernels' 192-query groups after the reference reorders tokens into 4x6x8 voxels) gets a key set: the
  ``k = round(attn_top_keys x N)`` keys of largest column sum ``sum_(q in group) exp(s_qj - lse_prev_q)``
  (the attention probabilities normalised with the previous dense step's ``lse``, as the reference's
  ``dense_colsum_attn`` kernel computes them), plus each key with probability ``attn_random_keys``, plus
  the keys in a window of ``attn_local_voxels`` voxels per axis around the group's voxel (shifted inward at
  the borders). ``A_S`` is attention restricted to the set, its softmax normalised over the set (the
  reference's ``csp_attn``); the cache keeps ``o - A_S(q, k, v)`` and ``lse`` becomes this step's.
- A sparse step: ``o = cache + A_S(q_t, k_t, v_t)``: only the chosen columns are recomputed, the rest of
  the output is the cached difference. A layer with no key set yet (its first steps reused by a step
  cache) runs its step dense.

MLP (a GELU feed-forward ``fc2(gelu(fc1 x))``; off unless ``mlp_top_keys`` is set, as in the reference's
Wan and HunyuanVideo settings). Every ``mlp_full_step_every``-th step is dense: the cache keeps the
activations ``a = gelu(fc1 x)``, the output, and the per-voxel mean of ``fc1 x``. On a sparse step each
voxel's columns are chosen afresh, except on odd steps from step 10 on, which keep the last choice (the
reference's constants): the ``round(mlp_top_keys x F)`` hidden columns whose ``|fc1(mean_voxel x) -
cached mean|`` is largest, plus each column with probability ``mlp_random_keys``; the chosen columns'
cached means become the new ones. Then, for the chosen columns only, ``a' = gelu(fc1 x)``; the output
becomes ``out + (a' - a) W2^T`` (no bias: it is in ``out`` already) and ``a`` takes ``a'``.

Nothing sparse gives the dense model: with every step dense (``attn_full_step_every`` 1,
``mlp_full_step_every`` 1) the layers run the model's own attention and MLP; with every key and column
chosen (``attn_top_keys`` and ``mlp_top_keys`` 1) the deltas add up to the dense outputs (to rounding).

Where this differs from the reference, and why:
- Exact top-k per group. The kernels round the key count to a multiple of 128 and estimate the MLP's
  cutoff from a sample of 1024 columns; both are kernel tiling, not the rule.
- A group keeps its top keys whatever its window covers; the reference keeps only the window for a
  group whose window and top-k together would reach every key, which is not dense when ``k = N``.
- Query groups and MLP token blocks are voxels of the transformer's own token grid (partial voxels at
  the edges); the reference reorders the whole sequence into voxels and tiles it in 128 and 192 tokens.
- Random keys come from a generator seeded per run, so a job is reproducible.
- Supported families: those whose blocks have a self-attention that calls SDPA and a GELU feed-forward
  (Wan, LTX-Video). The layers compute their attention from SDPA's inputs, so their processors run
  the native backend during the run, and the blocks run eager (compiled blocks are bypassed).

Composition (the paper's "Chipmunk + Step Caching" rows: 2.16x to 3.72x on HunyuanVideo, 1.37x to
1.63x on FLUX.1-dev): the reference skips a fixed set of steps whole, reusing the block stack's output,
and runs its sparse deltas on the others, its dense/sparse step rule counting every step. Here
``step_cache`` names one of skipstep's step caches (MagCache or TeaCache, with its published defaults and
the model's profile): its schedule decides which steps reuse the block stack's residual, and the
sparse deltas run on the computed steps by the same step-index rule. Each branch's figures carry
``rules``: per step ``D`` dense layers, ``s`` sparse deltas, ``m``/``t`` reused by MagCache/TeaCache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU
from torch.overrides import TorchFunctionMode

from core.caching.base import BranchState, RunPlan, TimestepCache
from core.caching.composed import STEP_RULES, step_rule_schedule
from core.contract.strategies import ChipmunkParams
from core.errors import CacheConfigError

# The reference's MLP keeps its column choice on odd steps from this step on (modules/mlp.py).
MLP_CHOICE_KEPT_FROM = 10
# Logit elements computed at once by the chunked attention passes (about 512 MiB in float32).
CHUNK_ELEMENTS = 2**27


@dataclass(frozen=True)
class Voxels:
    """How a call's tokens fall into voxels: each token's voxel, and the tokens of each voxel's local window."""

    of_token: torch.Tensor  # (N,) long
    count: int
    window: torch.Tensor | None  # (voxels, N) bool; None without a local window


def voxel_layout(grid: tuple[int, int, int], shape: Sequence[int], local: int, device: torch.device) -> Voxels:
    """Voxels of ``shape`` tokens over a raster-ordered ``grid`` (frames, rows, columns)."""
    axes = [torch.arange(size, device=device) // side for size, side in zip(grid, shape, strict=True)]
    counts = [math.ceil(size / side) for size, side in zip(grid, shape, strict=True)]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # each token's voxel
    of_token = (coords[:, 0] * counts[1] + coords[:, 1]) * counts[2] + coords[:, 2]
    window = None
    if local > 0:
        reach = local // 2
        voxel_coords = torch.stack(
            torch.meshgrid(*(torch.arange(c, device=device) for c in counts), indexing="ij"), dim=-1
        ).reshape(-1, 3)
        span = torch.tensor([min(2 * reach + 1, c) for c in counts], device=device)
        # The window of 2*reach+1 voxels centred on the voxel, shifted inward where it would leave the grid.
        low = (voxel_coords - reach).clamp(min=0)
        low = torch.minimum(low, torch.tensor(counts, device=device) - span)
        inside = (coords[None] >= low[:, None]) & (coords[None] < (low + span)[:, None])
        window = inside.all(dim=-1)
    return Voxels(of_token, math.prod(counts), window)


def _chunks(queries: int, keys: int, heads: int) -> Iterator[slice]:
    size = max(1, CHUNK_ELEMENTS // max(1, keys * heads))
    for start in range(0, queries, size):
        yield slice(start, min(start + size, queries))


def _logits(q: torch.Tensor, k: torch.Tensor, rows: slice, scale: float) -> torch.Tensor:
    # The product in the model's dtype (tensor cores accumulate in float32), the softmax side in float32.
    return (q[:, :, rows] @ k.transpose(-1, -2)).float() * scale


def key_scores(
    q: torch.Tensor, k: torch.Tensor, scale: float, lse_prev: torch.Tensor | None, voxels: Voxels
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each query's log-sum-exp, and (given the previous one) each voxel's column sums of the attention
    probabilities normalised with ``lse_prev``: (batch, heads, voxels, keys)."""
    batch, heads, queries, _ = q.shape
    keys = k.shape[2]
    lse = torch.empty(batch, heads, queries, device=q.device, dtype=torch.float32)
    sums = None
    if lse_prev is not None:
        sums = torch.zeros(batch, heads, voxels.count, keys, device=q.device, dtype=torch.float32)
    for rows in _chunks(queries, keys, heads):
        logits = _logits(q, k, rows, scale)
        lse[:, :, rows] = logits.logsumexp(dim=-1)
        if sums is not None:
            sums.index_add_(2, voxels.of_token[rows], (logits - lse_prev[:, :, rows, None]).exp())
    return lse, sums


def choose(scores: torch.Tensor, count: int, random_share: float, generator: torch.Generator) -> torch.Tensor:
    """Per row of ``scores``, the ``count`` largest entries plus each entry with probability ``random_share``."""
    chosen = torch.rand(scores.shape, generator=generator, device=scores.device) < random_share
    if count > 0:
        chosen.scatter_(-1, scores.topk(min(count, scores.shape[-1]), dim=-1).indices, True)
    return chosen


def restricted_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, chosen: torch.Tensor, voxels: Voxels
) -> torch.Tensor:
    """Attention of each query over its voxel's chosen keys only (softmax over those; 0 for an empty set): SDPA
    with a boolean mask, which on CUDA runs a fused kernel instead of materialising the probabilities."""
    batch, heads, queries, _ = q.shape
    out = torch.empty(batch, heads, queries, v.shape[-1], device=q.device, dtype=q.dtype)
    for rows in _chunks(queries, k.shape[2], heads):
        allowed = chosen[:, :, voxels.of_token[rows]]
        out[:, :, rows] = F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=allowed, scale=scale)
    return out.nan_to_num(0.0)


@dataclass
class AttentionDeltas:
    """One layer's attention cache, for one CFG branch."""

    lse: torch.Tensor | None = None
    chosen: torch.Tensor | None = None  # (batch, heads, voxels, keys) bool
    cached: torch.Tensor | None = None  # o - A_S at the last dense step


@dataclass
class MlpDeltas:
    """One layer's MLP cache, for one CFG branch."""

    activations: torch.Tensor | None = None
    output: torch.Tensor | None = None
    mid_means: torch.Tensor | None = None  # (batch, voxels, hidden)
    chosen: torch.Tensor | None = None  # (batch, voxels, hidden) bool


def voxel_means(x: torch.Tensor, voxels: Voxels) -> torch.Tensor:
    """(batch, tokens, channels) -> (batch, voxels, channels): each voxel's mean token."""
    sums = torch.zeros(x.shape[0], voxels.count, x.shape[-1], device=x.device, dtype=torch.float32)
    sums.index_add_(1, voxels.of_token, x.float())
    sizes = torch.bincount(voxels.of_token, minlength=voxels.count).clamp(min=1)
    return (sums / sizes[None, :, None]).to(x.dtype)


class _Sdpa(TorchFunctionMode):
    """Hands the one ``scaled_dot_product_attention`` call of a self-attention module to ``attend``."""

    def __init__(
        self, attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float | None], torch.Tensor]
    ) -> None:
        super().__init__()
        self.attend = attend

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        call = dict(zip(names, args, strict=False)) | kwargs
        if call.get("attn_mask") is not None or call.get("is_causal") or call.get("dropout_p"):
            raise CacheConfigError("chipmunk: self-attention with a mask, causality or dropout is not supported")
        return self.attend(call["query"], call["key"], call["value"], call.get("scale"))


class _SparseAttention(torch.nn.Module):
    def __init__(self, attention: torch.nn.Module, layer: int, cache: Chipmunk) -> None:
        super().__init__()
        self.attention = attention
        self.layer = layer
        self.cache = cache

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        processor = self.attention.processor
        backend = getattr(processor, "_attention_backend", None)
        # The layer computes attention from SDPA's inputs: the native backend is the one that calls SDPA.
        processor._attention_backend = "native"
        try:
            with _Sdpa(lambda q, k, v, scale: self.cache.attend(self.layer, q, k, v, scale)):
                return self.attention(*args, **kwargs)
        finally:
            processor._attention_backend = backend


class _SparseMlp(torch.nn.Module):
    def __init__(self, mlp: torch.nn.Module, layer: int, cache: Chipmunk) -> None:
        super().__init__()
        if not isinstance(mlp.net[0], GELU) or not isinstance(mlp.net[2], torch.nn.Linear):
            raise CacheConfigError("chipmunk: mlp_top_keys needs a GELU feed-forward (fc1, GELU, fc2)")
        self.mlp = mlp
        self.layer = layer
        self.cache = cache

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.cache.feed_forward(self.layer, self.mlp, hidden_states)


class Chipmunk(TimestepCache):
    name = "chipmunk"
    # Its attention layers choose keys from a call's whole sequence.
    sequence_parallel = False
    params: ChipmunkParams

    @property
    def reuses(self) -> bool:  # type: ignore[override]
        return self.params.step_cache != "none"

    def prepare(self, plan: RunPlan) -> None:
        self.plan = plan
        self.steps_reused = self._step_cache_schedule(plan)
        super().prepare(plan)
        self.attention: dict[tuple[int, str], AttentionDeltas] = {}
        self.mlp: dict[tuple[int, str], MlpDeltas] = {}
        self.voxels: Voxels | None = None
        self.grid: tuple[int, int, int] | None = None
        self.current: BranchState | None = None
        self.generator: torch.Generator | None = None

    def _step_cache_schedule(self, plan: RunPlan) -> dict[str, list[bool]] | None:
        if self.params.step_cache == "none":
            return None
        return step_rule_schedule(self.params.step_cache, self.profile, plan, "chipmunk's step_cache")

    def signals(self) -> dict[str, Sequence[float]]:
        return {branch: [0.0] * self.plan.num_steps for branch in self.plan.branches}

    def replay(self, branch: int, signals: Sequence[float]) -> list[bool]:
        if self.steps_reused is None:
            return [True] * self.plan.num_steps
        return self.steps_reused[self.plan.branches[branch]]

    def state_for(self, branch: str) -> BranchState:
        self.current = super().state_for(branch)
        return self.current

    # -- the rule ---------------------------------------------------------------------------

    def dense_attention_step(self, step: int) -> bool:
        full = self.params.attn_full_steps
        if full is not None:
            return step in full
        return step < 2 or step % self.params.attn_full_step_every == 0

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sdpa_scale: float | None
    ) -> torch.Tensor:
        state = self.current
        deltas = self.attention.setdefault((layer, state.name), AttentionDeltas())
        voxels = self.voxels
        scale = sdpa_scale if sdpa_scale is not None else 1 / math.sqrt(q.shape[-1])
        if deltas.chosen is not None and not self.dense_attention_step(state.step):
            return deltas.cached + restricted_attention(q, k, v, scale, deltas.chosen, voxels)
        # The model's own call, as SDPA received it: a dense step is the dense layer to the bit.
        out = F.scaled_dot_product_attention(q, k, v, scale=sdpa_scale)
        lse, sums = key_scores(q, k, scale, deltas.lse, voxels)
        deltas.lse = lse
        if sums is not None:
            count = round(self.params.attn_top_keys * k.shape[2])
            chosen = choose(sums, count, self.params.attn_random_keys, self.generator)
            if voxels.window is not None:
                chosen |= voxels.window
            deltas.chosen = chosen
            deltas.cached = out - restricted_attention(q, k, v, scale, chosen, voxels)
        return out

    def feed_forward(self, layer: int, mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        state, params, voxels = self.current, self.params, self.voxels
        deltas = self.mlp.setdefault((layer, state.name), MlpDeltas())
        gelu, fc2 = mlp.net[0], mlp.net[2]
        step = state.step
        if deltas.output is None or step % params.mlp_full_step_every == 0:
            mid = gelu.proj(x)
            activations = gelu.gelu(mid)
            output = activations
            for module in mlp.net[1:]:
                output = module(output)
            deltas.activations, deltas.output = activations, output
            deltas.mid_means, deltas.chosen = voxel_means(mid, voxels), None
            return output
        if deltas.chosen is None or step < MLP_CHOICE_KEPT_FROM or step % 2 == 0:
            means = gelu.proj(voxel_means(x, voxels))
            count = round(params.mlp_top_keys * means.shape[-1])
            deltas.chosen = choose((means - deltas.mid_means).abs(), count, params.mlp_random_keys, self.generator)
            deltas.mid_means = torch.where(deltas.chosen, means, deltas.mid_means)
        chosen = deltas.chosen[:, voxels.of_token]
        fresh = gelu.gelu(gelu.proj(x))
        change = torch.where(chosen, fresh - deltas.activations, 0)
        deltas.output = deltas.output + F.linear(change, fc2.weight)
        deltas.activations = torch.where(chosen, fresh, deltas.activations)
        return deltas.output

    # -- wiring -----------------------------------------------------------------------------

    def use_grid(self, grid: tuple[int, int, int], device: torch.device) -> None:
        """Lay the calls' tokens out in voxels (the first call, and again if the grid changes)."""
        if grid != self.grid:
            self.grid = grid
            self.voxels = voxel_layout(grid, self.params.voxel_shape, self.params.attn_local_voxels, device)
        if self.generator is None:
            self.generator = torch.Generator(device).manual_seed(0)

    def _grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.use_grid(self.plan.family.token_grid(transformer, args, kwargs), transformer.device)

    @contextmanager
    def _layers_replaced(self, blocks: Sequence[torch.nn.Module]) -> Iterator[None]:
        if len(self.plan.family.block_lists(self.plan.transformer)) != 1:
            raise CacheConfigError(f"chipmunk: not available for the {self.plan.family.name} family")
        try:
            attention_name, mlp_name = self.plan.family.sparse_layers(blocks[0])
        except NotImplementedError as exc:
            raise CacheConfigError(f"chipmunk: {exc}") from None
        replaced: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
        try:
            for layer, block in enumerate(blocks):
                if layer < self.params.first_dense_layers:
                    continue
                attention = getattr(block, attention_name)
                replaced.append((block, attention_name, attention))
                setattr(block, attention_name, _SparseAttention(attention, layer, self))
                if self.params.mlp_top_keys is not None:
                    mlp = getattr(block, mlp_name)
                    replaced.append((block, mlp_name, mlp))
                    setattr(block, mlp_name, _SparseMlp(mlp, layer, self))
            yield
        finally:
            for block, name, module in reversed(replaced):
                setattr(block, name, module)

    @contextmanager
    def inside_blocks(self, blocks: Sequence[torch.nn.Module]) -> Iterator[None]:
        with ExitStack() as stack:
            stack.enter_context(self._layers_replaced(blocks))
            hook = self.plan.transformer.register_forward_pre_hook(self._grid, with_kwargs=True)
            stack.callback(hook.remove)
            # The reference path runs eager: a compiled block would trace the swapped layers and their state.
            stack.enter_context(torch.compiler.set_stance("force_eager"))
            yield

    # -- figures ----------------------------------------------------------------------------

    def step_rules(self) -> dict[str, str]:
        reused = STEP_RULES[self.params.step_cache][1] if self.steps_reused is not None else "."
        return {
            name: "".join(
                ("D" if self.dense_attention_step(step) else "s") if computed else reused
                for step, computed in enumerate(decisions)
            )
            for name, decisions in self.schedule.items()
        }
