"""Applies a TimestepCache to a diffusers video transformer without editing the model.

The cached unit is either the block stack (hooks on its first, middle and last block) or
the whole transformer (one hook). The branch comes from the cache context that diffusers
pipelines open around each transformer call (``cond``, ``uncond`` or ``cond_uncond``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from core.caching.base import TimestepCache

HOOK_NAME = "skipstep_timestep_cache"


class _NoState(BaseState):
    def reset(self) -> None:
        pass


class _UnitHook(ModelHook):
    """One hook of the cached unit: the head decides, the tail records, the middle follows."""

    # Stateful hooks are the ones whose StateManager diffusers' cache_context updates.
    _is_stateful = True

    def __init__(self, cache: TimestepCache, context: StateManager, head: bool, tail: bool, whole_model: bool):
        super().__init__()
        self.cache = cache
        self.context = context
        self.head = head
        self.tail = tail
        self.whole_model = whole_model

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        branch = self.context._context.name if self.context._context is not None else "cond"
        state = self.cache.state_for(branch)
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        family = self.cache.plan.family
        if self.head:
            reused = self.cache.enter(state, hidden_states)
            if reused is not None:
                if self.tail:
                    self.cache.exit(state, reused)
                if self.whole_model:
                    return self._pack(reused, kwargs)
                return family.skipped_block_output(reused, args, kwargs)
        elif not state.computing:
            if self.tail:
                self.cache.exit(state, hidden_states)
            return family.skipped_block_output(hidden_states, args, kwargs)
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.tail:
            self.cache.exit(state, self._unpack(output) if self.whole_model else family.block_hidden_states(output))
        return output

    @staticmethod
    def _pack(sample: torch.Tensor, kwargs: dict[str, Any]) -> Any:
        return Transformer2DModelOutput(sample=sample) if kwargs.get("return_dict", True) else (sample,)

    @staticmethod
    def _unpack(output: Any) -> torch.Tensor:
        return output[0] if isinstance(output, tuple) else output.sample

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


@contextmanager
def attached(cache: TimestepCache, transformer: torch.nn.Module) -> Iterator[None]:
    """Hook ``cache`` into ``transformer`` for the duration of the block; prepare() it first."""
    units = [transformer] if cache.scope == "model" else list(cache.plan.family.blocks(transformer))
    context = StateManager(_NoState)
    root = HookRegistry.check_if_exists_or_initialize(transformer)
    for index, unit in enumerate(units):
        hook = _UnitHook(
            cache, context, head=index == 0, tail=index == len(units) - 1, whole_model=cache.scope == "model"
        )
        HookRegistry.check_if_exists_or_initialize(unit).register_hook(hook, HOOK_NAME)
    root.invalidate_child_registries_cache()
    try:
        yield
    finally:
        for unit in units:
            unit._diffusers_hook.remove_hook(HOOK_NAME, recurse=False)
        root.invalidate_child_registries_cache()
