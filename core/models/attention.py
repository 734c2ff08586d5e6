"""The transformer's attention kernel, chosen through diffusers' attention dispatcher.

``SKIPSTEP_ATTENTION_BACKEND`` names a diffusers backend (``AttentionBackendName``: ``native``,
``_native_cudnn``, ``flash``, ``_flash_3``, ``sage``, ``flex``, ``_native_math``, ...). Before the
model serves anything the backend is checked here, on this machine: its package (diffusers'
own requirement check), then one small attention call through it in the model's dtype on the
model's device. A backend that fails either (package missing, no CUDA, a dtype or device it does
not take) is replaced by ``native`` (PyTorch's SDPA), with the reason logged and kept beside the
model, so every job's metrics say which kernel ran.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import attention_backend, dispatch_attention_fn
from diffusers.utils import logging as diffusers_logging

log = logging.getLogger("skipstep.models")

NATIVE = "native"


@dataclass(frozen=True)
class AttentionChoice:
    requested: str
    used: str
    # Why the requested backend was not used; None when it was.
    fallback_reason: str | None = None


def probe(backend: str, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
    """Raise if ``backend`` cannot run here: its package, then one tiny call in the model's layout."""
    # The context manager runs diffusers' requirement check and restores the process default on exit.
    with attention_backend(backend):
        shape = (1, 16, heads, head_dim)
        query, key, value = (torch.randn(shape, dtype=dtype, device=device) for _ in range(3))
        dispatch_attention_fn(query, key, value, backend=backend)


def choose_backend(
    requested: str, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> AttentionChoice:
    """``requested`` if it runs here, else native with the reason."""
    if requested == NATIVE:
        return AttentionChoice(requested, NATIVE)
    try:
        probe(requested, heads, head_dim, dtype, device)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("attention backend %r cannot run on %s (%s); using %r", requested, device, reason, NATIVE)
        return AttentionChoice(requested, NATIVE, reason)
    return AttentionChoice(requested, requested)


def apply_attention_backend(transformer: torch.nn.Module, requested: str) -> AttentionChoice:
    """Set the transformer's attention processors to ``requested`` or, where it cannot run, native."""
    config = transformer.config
    heads = config.num_attention_heads
    choice = choose_backend(requested, heads, config.attention_head_dim, transformer.dtype, transformer.device)
    # Every processor is set explicitly: one left at its default would follow the process-wide active backend,
    # which another model's set_attention_backend changes. diffusers warns each time that the API is experimental.
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with attention_backend(choice.used):
            transformer.set_attention_backend(choice.used)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return choice
