"""torch.compile for workers: the transformer's repeated blocks, compiled once and warmed up.

Regional compilation (``compile_repeated_blocks``) compiles one block class; every block of the
stack shares its graph. The cache engine decides outside the blocks (``core.caching.hooks``), so
the compiled graph holds no cache state: no graph breaks, and no recompiles across steps, CFG
branches, strategies or jobs of one shape. A new shape compiles once more (then dynamo marks it
dynamic). The warm-up runs the model's default shape, with both CFG branches, at worker start.
"""

from __future__ import annotations

from core.caching.none import NoCache
from core.contract.request import GenerationRequest
from core.generation import run
from core.models.loading import LoadedModel
from core.settings import Settings

WARMUP_STEPS = 2


def compile_blocks(model: LoadedModel, backend: str) -> None:
    model.transformer.compile_repeated_blocks(fullgraph=True, backend=backend)


def warm_up(model: LoadedModel) -> None:
    """One short uncached run at the default shape, so the first job does not pay the compilation."""
    request = GenerationRequest(prompt="warm-up", num_inference_steps=WARMUP_STEPS)
    shape = request.shape(model.family.rules, model.default_shape)
    run(model, request, shape, NoCache())


def prepare_compiled(model: LoadedModel, settings: Settings) -> None:
    """Compile and warm up the model when ``SKIPSTEP_COMPILE`` asks for it."""
    if settings.compile:
        compile_blocks(model, settings.compile_backend)
        warm_up(model)
