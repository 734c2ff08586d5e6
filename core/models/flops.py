"""An analytic count of a Wan transformer call's floating-point operations, for the share of the GPU's peak
that a run achieves (``bench/gpu.py``).

A multiply-add counts 2; only matrix products count (linear layers, the patch convolution, attention's
two products), as ``torch.utils.flop_counter`` counts them: norms, modulation, RoPE, softmax and the
activations are a fraction of a percent at video sizes. With ``N`` video tokens, ``L`` text tokens,
width ``D`` (heads x head dim), feed-forward width ``F``, text-encoder width ``T``, timestep-frequency
width ``f``, ``P`` latent values per patch (channels x patch volume) and ``Q`` output values per patch:

- each block: self-attention projections q, k, v, out ``4 * 2ND^2``; its products ``QK^T`` and ``AV``
  ``2 * 2N^2D``; cross-attention q and out ``2 * 2ND^2``, k and v on the text ``2 * 2LD^2``, its products
  ``2 * 2NLD``; feed-forward ``2 * 2NDF``;
- once per call, outside the blocks: patch embedding ``2NPD``; timestep embedding ``2fD + 2D^2`` and its
  projection to the six modulations ``2D * 6D``; text embedding ``2LTD + 2LD^2``; output projection ``2NDQ``.

A call whose block stack a cache skipped still runs the outside part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.contract.shapes import Shape


@dataclass(frozen=True)
class CallFlops:
    per_block: int
    layers: int
    outside: int

    @property
    def per_call(self) -> int:
        """A call that runs every block."""
        return self.per_block * self.layers + self.outside


def wan_tokens(config: object, shape: Shape, temporal_scale: int = 4, spatial_scale: int = 8) -> int:
    """Video tokens of a Wan call: latent frames, rows and columns (VAE scales), over the patch."""
    patch_t, patch_h, patch_w = config.patch_size
    frames = (shape.num_frames - 1) // temporal_scale + 1
    return (frames // patch_t) * (shape.height // spatial_scale // patch_h) * (shape.width // spatial_scale // patch_w)


def wan_call_flops(transformer: torch.nn.Module, tokens: int, text_tokens: int) -> CallFlops:
    config = transformer.config
    n, length = tokens, text_tokens
    d = config.num_attention_heads * config.attention_head_dim
    patch = math.prod(config.patch_size)
    self_attention = 4 * 2 * n * d * d + 2 * 2 * n * n * d
    cross_attention = 2 * 2 * n * d * d + 2 * 2 * length * d * d + 2 * 2 * n * length * d
    feed_forward = 2 * 2 * n * d * config.ffn_dim
    outside = (
        2 * n * config.in_channels * patch * d
        + 2 * config.freq_dim * d
        + 2 * d * d
        + 2 * d * 6 * d
        + 2 * length * config.text_dim * d
        + 2 * length * d * d
        + 2 * n * d * config.out_channels * patch
    )
    return CallFlops(self_attention + cross_attention + feed_forward, config.num_layers, outside)
