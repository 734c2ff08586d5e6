"""torch.compile for workers: the transformer's repeated blocks, compiled once, warmed up, and kept on disk.

Regional compilation (``compile_repeated_blocks``) compiles one block class; every block of the
stack shares its graph. The cache engine decides outside the blocks (``core.caching.hooks``), so
the compiled graph holds no cache state: no graph breaks, and no recompiles across steps, CFG
branches, strategies or jobs of one shape. Each further shape compiles once more: the second
shape makes dynamo mark the sizes dynamic, and that graph serves every later one. A worker
therefore warms up at each shape it expects (the model's default and ``SKIPSTEP_COMPILE_SHAPES``)
before it takes jobs.

With inductor, what compiling produced is kept under ``SKIPSTEP_HOME/compile-cache``: inductor's
own on-disk caches (FX graphs, AOTAutograd, Triton kernels and their autotuning:
``TORCHINDUCTOR_CACHE_DIR`` points there) and a portable "mega-cache" file of the same artifacts
(``torch.compiler.save_cache_artifacts``), loaded before compiling, so a restarted worker, or a
new one given the file, loads the kernels instead of compiling them. Dynamo still traces the block
(a second or two).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from core.caching.none import NoCache
from core.contract.request import GenerationRequest
from core.contract.shapes import Shape
from core.generation import expert_caches, run
from core.models.loading import LoadedModel
from core.settings import Settings

log = logging.getLogger("skipstep.models")

WARMUP_STEPS = 2
# Wan2.2 A14B switches experts at a timestep boundary (0.875 of the schedule for T2V, 0.9 for I2V): the last of 8
# steps, at sigma 1/8 shifted by 12 (0.63), is past both, so a warm-up of 8 steps runs each expert.
EXPERT_WARMUP_STEPS = 8


def compile_blocks(model: LoadedModel, backend: str) -> None:
    """Every transformer's blocks: Wan2.2 A14B's two experts each have their own."""
    for _, transformer in model.experts:
        transformer.compile_repeated_blocks(fullgraph=True, backend=backend)
    model.compiled = True


def warmup_shapes(model: LoadedModel, settings: Settings) -> list[Shape]:
    """The model's default shape, then SKIPSTEP_COMPILE_SHAPES (checked against the family's size rules)."""
    shapes = [model.default_shape]
    for width, height, frames in settings.warmup_shapes:
        request = GenerationRequest(prompt="warm-up", width=width, height=height, num_frames=frames)
        shape = request.shape(model.family.rules, model.default_shape)
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def warm_up(model: LoadedModel, shape: Shape) -> None:
    """One short uncached run at ``shape``, both CFG branches (and, with two experts, a step of each), so no job
    pays its compilation."""
    steps = WARMUP_STEPS if len(model.experts) == 1 else EXPERT_WARMUP_STEPS
    request = GenerationRequest.at(shape, "warm-up", num_inference_steps=steps)
    run(model, request, shape, expert_caches(model, shape, lambda *_: NoCache()))


class CompileCache:
    """Inductor's caches under ``directory``, and a mega-cache file of their artifacts named by ``key``."""

    def __init__(self, directory: Path, key: str) -> None:
        self.directory = directory
        self.file = directory / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', key)}.bin"

    @classmethod
    def of(cls, model: LoadedModel, settings: Settings) -> CompileCache:
        """The cache of this model's blocks on this kind of device, torch release and backend."""
        device = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else model.device.type
        key = f"{model.name}-{device}-torch{torch.__version__}-{settings.compile_backend}"
        return cls(settings.compile_cache_dir, key)

    def open(self) -> None:
        """Point inductor at the directory and hot-load the mega-cache file; before anything is compiled."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # Set, not defaulted: importing diffusers (torchao, when installed) already sets inductor's default in /tmp.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.directory / "inductor")
        if self.file.is_file():
            try:
                torch.compiler.load_cache_artifacts(self.file.read_bytes())
            except Exception as exc:  # a stale or foreign file is only a lost shortcut
                log.warning(
                    "compile cache %s not loaded (%s: %s); compiling afresh", self.file, type(exc).__name__, exc
                )

    def save(self) -> None:
        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is None:
            return
        scratch = self.file.with_suffix(".tmp")
        scratch.write_bytes(artifacts[0])
        scratch.replace(self.file)


def compile_and_warm_up(model: LoadedModel, settings: Settings) -> None:
    """Compile the blocks with SKIPSTEP_COMPILE_BACKEND and warm them up at every warm-up shape, through the
    compile cache with inductor."""
    backend = settings.compile_backend
    cache = CompileCache.of(model, settings) if backend == "inductor" else None
    if cache is not None:
        cache.open()
    compile_blocks(model, backend)
    for shape in warmup_shapes(model, settings):
        warm_up(model, shape)
    if cache is not None:
        cache.save()
