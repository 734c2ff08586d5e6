"""Applies a TimestepCache to a diffusers video transformer without editing the model's code.

For the duration of a run each block of the stack is put in a slot: a thin module that calls
the block, or skips it, and that feeds the cache what it reads. The decisions, the per-branch
state and the timing live in the slots, never inside a block, so a block compiled with
``compile_repeated_blocks`` is traced alone: no graph breaks, no guards on the cache's state.
The branch comes from the cache context that diffusers pipelines open around each transformer
call (``cond``, ``uncond`` or ``cond_uncond``), read by a hook on the transformer itself, which
also runs the decision when the cached unit is the whole model (EasyCache).

Under context parallelism (core.parallel) diffusers splits the token sequence at the first block's
input. The slots need the split input too (the unit's input, the input of the blocks before it), so
for the run the first slot applies diffusers' split hook itself instead of the block. Under
CFG-parallel the transformer hook hands each call to the run's exchange first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.context_parallel import ContextParallelSplitHook
from diffusers.hooks.hooks import BaseState, StateManager
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from core.caching.base import BranchState, TimestepCache
from core.parallel import CfgParallel

HOOK_NAME = "skipstep_timestep_cache"


class _NoState(BaseState):
    def reset(self) -> None:
        pass


def _hidden_states(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


class _Runner:
    """One run's cache driven from the transformer call and its block slots."""

    def __init__(
        self,
        cache: TimestepCache,
        num_blocks: int,
        split: ContextParallelSplitHook | None,
        cfg: CfgParallel | None,
    ) -> None:
        self.cache = cache
        self.start, self.end = cache.unit_blocks(num_blocks) if cache.scope == "blocks" else (0, 0)
        self.state: BranchState | None = None
        self.split = split
        self.cfg = cfg

    def model_call(self, branch: str, forward: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
        if self.cfg is None:
            return self._model_call(branch, forward, args, kwargs)
        return self.cfg.call(
            branch,
            lambda: self._model_call(branch, forward, args, kwargs),
            _hidden_states(args, kwargs),
            kwargs.get("return_dict", True),
            self.cache,
        )

    def _model_call(self, branch: str, forward: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
        self.state = self.cache.state_for(branch)
        if self.cache.scope == "blocks":
            return forward(*args, **kwargs)
        state, hidden_states = self.state, _hidden_states(args, kwargs)
        reused = self.cache.enter(state, hidden_states)
        if reused is not None:
            self.cache.exit(state, reused)
            return Transformer2DModelOutput(sample=reused) if kwargs.get("return_dict", True) else (reused,)
        output = forward(*args, **kwargs)
        self.cache.exit(state, output[0] if isinstance(output, tuple) else output.sample)
        return output

    def block_call(self, index: int, block: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        if index == 0 and self.split is not None:
            args, kwargs = self.split.pre_forward(block, *args, **kwargs)
        if not self.start <= index < self.end:
            if index == 0:
                self.state.call_input = _hidden_states(args, kwargs)
            return block(*args, **kwargs)
        state, family = self.state, self.cache.plan.family
        if index == self.start:
            reused = self.cache.enter(state, _hidden_states(args, kwargs))
            output = block(*args, **kwargs) if reused is None else family.skipped_block_output(reused, args, kwargs)
        elif state.computing:
            output = block(*args, **kwargs)
        else:
            # The unit's output was already formed at its first block; the rest pass it on.
            output = family.skipped_block_output(_hidden_states(args, kwargs), args, kwargs)
        if index == self.end - 1:
            self.cache.exit(state, family.block_hidden_states(output))
        return output


class _Slot(torch.nn.Module):
    def __init__(self, block: torch.nn.Module, index: int, runner: _Runner) -> None:
        super().__init__()
        self.block = block
        self.index = index
        self.runner = runner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.runner.block_call(self.index, self.block, args, kwargs)


class _BranchHook(ModelHook):
    """On the transformer: learns the call's cache context (its branch) and starts the call."""

    # Stateful hooks are the ones whose StateManager diffusers' cache_context updates.
    _is_stateful = True

    def __init__(self, runner: _Runner) -> None:
        super().__init__()
        self.runner: _Runner | None = runner
        self.context = StateManager(_NoState)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        branch = self.context._context.name if self.context._context is not None else "cond"
        return self.runner.model_call(branch, self.fn_ref.original_forward, args, kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


def _split_hook(block: torch.nn.Module) -> tuple[str, ContextParallelSplitHook] | None:
    registry = HookRegistry.check_if_exists_or_initialize(block)
    for name, hook in registry.hooks.items():
        if isinstance(hook, ContextParallelSplitHook):
            return name, hook
    return None


@contextmanager
def attached(cache: TimestepCache, transformer: torch.nn.Module, cfg: CfgParallel | None = None) -> Iterator[None]:
    """Hook ``cache`` into ``transformer`` for the duration of the block; prepare() it first. ``cfg``: the run's
    CFG-parallel exchange, where ranks split the branches."""
    # Each block's place: the model's own block list and the index in it (a family may have several lists).
    places = [(blocks, i) for blocks in cache.plan.family.block_lists(transformer) for i in range(len(blocks))]
    originals = [blocks[i] for blocks, i in places]
    split = _split_hook(originals[0]) if cache.scope == "blocks" else None
    runner = _Runner(cache, len(places), split[1] if split else None, cfg)
    hook = _BranchHook(runner)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(hook, HOOK_NAME)
    if split is not None:
        HookRegistry.check_if_exists_or_initialize(originals[0]).remove_hook(split[0], recurse=False)
    if cache.scope == "blocks":
        for index, ((blocks, i), block) in enumerate(zip(places, originals, strict=True)):
            blocks[i] = _Slot(block, index, runner)
    try:
        with cache.inside_blocks(originals):
            yield
    finally:
        for (blocks, i), block in zip(places, originals, strict=True):
            blocks[i] = block
        if split is not None:
            HookRegistry.check_if_exists_or_initialize(originals[0]).register_hook(split[1], split[0])
        registry.remove_hook(HOOK_NAME, recurse=False)
        # diffusers' hook and its function reference point at each other: garbage that only the cycle collector
        # frees, whenever it runs. Cut here, so the run's cached tensors go when the caller drops the cache.
        hook.runner = None
