"""One job across several devices of a host: the process group and how each rank shares the work.

Every rank loads the model and runs the whole pipeline with the same request and seed; what is
split is the transformer call:

- ``ulysses`` and ``ring``: diffusers' context parallelism (``ContextParallelConfig``) splits the
  token sequence across the ranks, exchanging heads (Ulysses all-to-all) or key/value chunks (ring)
  inside attention, and gathers the sequence again at the output head.
- ``cfg``: CFG-parallel (diffusers 0.42 has none): rank ``i`` computes the ``i``-th CFG branch of each
  step (cond, uncond); the other ranks hand the pipeline a placeholder that the exchange after the
  step's last branch fills, before the pipeline mixes the two predictions.

Ranks must take the same skip decisions or their collectives deadlock. Strategies that plan ahead
agree by construction; the adaptive ones reduce their signal over ``Parallelism.sequence_group``
(sums of the shards of the tokens, never ratios). Under ``cfg`` each branch's cache state lives on
its rank, and the owner broadcasts each decision so that every rank's report holds every branch.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig
from diffusers.hooks.context_parallel import apply_context_parallel
from diffusers.models._modeling_parallel import ParallelConfig
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from core.errors import ModelLoadError

Mode = Literal["ulysses", "ring", "cfg"]
MODES: tuple[Mode, ...] = ("ulysses", "ring", "cfg")

# Backends that return attention's log-sum-exp, which ring attention merges its partial results with.
# diffusers' native (SDPA) backend returns none, so ring needs CUDA and one of these.
_RING_BACKENDS = {"flash", "flash_hub", "_flash_3_hub", "_native_cudnn", "_native_flash", "sage", "sage_hub"}


def free_port() -> int:
    """A free TCP port on loopback for the group's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_group(rank: int, world_size: int, port: int, device: torch.device, timeout_s: float = 600) -> None:
    """Join the group of ``world_size`` processes meeting on loopback ``port``: NCCL on CUDA, gloo on CPU.

    ``timeout_s`` bounds every collective: a rank whose peer died fails within it instead of hanging."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


def close_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class Parallelism:
    """How this rank shares a transformer call with the others (``LoadedModel.parallel``)."""

    mode: Mode
    rank: int
    world_size: int
    # The group the token sequence is sharded over (ulysses, ring); None under cfg.
    sequence_group: dist.ProcessGroup | None = None

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def cfg(self, branches: tuple[str, ...]) -> CfgParallel | None:
        """The CFG-parallel exchange for one run, or None where the ranks do not split branches."""
        if self.mode != "cfg" or len(branches) < 2:
            return None
        return CfgParallel(branches, self.rank, self.world_size)


def enable(transformer: torch.nn.Module, mode: Mode) -> Parallelism:
    """Set ``transformer`` up for ``mode`` over the initialised default group."""
    if mode not in MODES:
        raise ModelLoadError(f"parallelism: {mode!r} is not one of {', '.join(MODES)}")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if mode == "cfg":
        if world_size != 2:
            raise ModelLoadError(f"parallelism: cfg splits the two CFG branches over 2 ranks, not {world_size}")
        config = transformer.config
        if config.in_channels != config.out_channels:
            raise ModelLoadError("parallelism: cfg needs a transformer whose prediction has its input's shape")
        return Parallelism(mode, rank, world_size)
    heads = transformer.config.num_attention_heads
    if mode == "ulysses" and heads % world_size:
        raise ModelLoadError(f"parallelism: ulysses needs the {heads} attention heads divisible by {world_size} ranks")
    backend = _attention_backend(transformer)
    if mode == "ring" and backend not in _RING_BACKENDS:
        raise ModelLoadError(
            f"parallelism: ring attention needs an attention backend that returns the log-sum-exp "
            f"({', '.join(sorted(_RING_BACKENDS))}); this worker's is {backend!r} (diffusers' native SDPA backend, "
            "the only one on CPU, returns none)"
        )
    degrees = {"ulysses_degree": world_size} if mode == "ulysses" else {"ring_degree": world_size}
    config = _enable_context_parallel(transformer, ContextParallelConfig(**degrees))
    return Parallelism(mode, rank, world_size, config._flattened_mesh.get_group())


def _attention_backend(transformer: torch.nn.Module) -> str:
    for module in transformer.modules():
        backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
        if backend is not None:
            return AttentionBackendName(backend).value
    return _AttentionBackendRegistry.get_active_backend()[0].value


def _enable_context_parallel(transformer: Any, cp_config: ContextParallelConfig) -> ContextParallelConfig:
    if transformer.device.type != "cpu":
        transformer.enable_parallelism(config=cp_config)
        return cp_config
    # diffusers' enable_parallelism picks the rank's device as `rank % accelerator count`, which divides by zero
    # on CPU; these are its steps for context parallelism with the CPU device.
    mesh = dist.device_mesh.init_device_mesh("cpu", cp_config.mesh_shape, mesh_dim_names=cp_config.mesh_dim_names)
    config = ParallelConfig(context_parallel_config=cp_config)
    config.setup(dist.get_rank(), dist.get_world_size(), torch.device("cpu"), mesh=mesh)
    transformer._parallel_config = config
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = config
    apply_context_parallel(transformer, cp_config, transformer._cp_plan)
    return cp_config


def reduced_relative_change(current: torch.Tensor, previous: torch.Tensor, group: dist.ProcessGroup) -> float:
    """``mean|current - previous| / mean|previous|`` over the tokens of every rank, each holding a shard of
    the same size: the two sums are all-reduced (one collective), and their ratio taken after."""
    sums = torch.stack([(current - previous).abs().sum(), previous.abs().sum()]).double()
    dist.all_reduce(sums, group=group)
    return (sums[0] / sums[1]).item()


@dataclass
class CfgParallel:
    """One run's CFG-parallel exchange: which rank computes which branch, and the placeholders to fill."""

    branches: tuple[str, ...]
    rank: int
    world_size: int
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def owner(self, branch: str) -> int:
        return self.branches.index(branch) % self.world_size

    def call(self, branch: str, compute: Any, hidden_states: torch.Tensor, return_dict: bool, cache: Any) -> Any:
        """The branch's transformer call on this rank: computed by its owner, a placeholder elsewhere; after the
        step's last branch every placeholder is filled from its owner."""
        owner = self.owner(branch)
        if owner == self.rank:
            output = compute()
            sample = output.sample if return_dict else output[0]
        else:
            # Wan's prediction has the latent's shape (in_channels == out_channels; checked on enable).
            sample = torch.empty_like(hidden_states)
            output = Transformer2DModelOutput(sample=sample) if return_dict else (sample,)
        computed = torch.tensor(
            [cache.states[branch].decisions[-1] if owner == self.rank else False], device=hidden_states.device
        )
        dist.broadcast(computed, src=owner)
        if owner != self.rank:
            cache.follow(branch, bool(computed.item()))
        self.outputs[branch] = sample
        if branch == self.branches[-1]:
            self._exchange()
        return output

    def _exchange(self) -> None:
        mine = self.outputs[self.branches[self.rank]].contiguous()
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        for branch, sample in self.outputs.items():
            if self.owner(branch) != self.rank:
                sample.copy_(gathered[self.owner(branch)])
        self.outputs.clear()
