"""The GPU headline: every strategy beside plain diffusers, in one process, on one warm model.

    SKIPSTEP_DEVICE=cuda PYTHONUNBUFFERED=1 python bench/gpu.py [--model wan2.1-1.3b-random]
        [--width 832 --height 480 --num-frames 81 --steps 50] [--row ROW ...]
        [--compiled-row ROW ...] [--compile-backend inductor] [--out gpu.md]

Builds the preset once (on the GPU: random initialisation there takes seconds), warms up with a
short run at the full shape, then measures one row after another: plain diffusers WanPipeline,
skipstep's strategies (``NAME[:k=v,...]`` as in cache_speedup.py) and diffusers' own MagCache
(``diffusers-magcache[:k=v,...]``, MagCacheParams' names and defaults, the profile's cond ratios).
Rows run in the order given, most important first, and each is printed and appended to --out as
soon as it is measured, so a run stopped at a time limit keeps what it measured. ``--compiled-row``
rows (skipstep strategies only) run after the others, on the transformer's blocks compiled once
through ``core.models.compile`` (``SKIPSTEP_COMPILE``'s path) and warmed up at the bench's shape;
the compile and warm-up seconds are printed apart.

Per row: end-to-end seconds (prompt encoding, denoising, VAE decode to frames; no MP4), denoise
seconds, computed/total transformer calls (a call is computed when its middle block ran), speedups
over the uncompiled skipstep ``none`` and over plain WanPipeline, measured/ideal (denoise speedup
over the ``none`` of the same mode, eager or compiled, against the block-weighted ideal: block
calls uncached over block calls run, so the blocks FBCache and DBCache always run count) and peak
GPU memory. Eager rows are counted by torch pre-hooks on the transformer and on every block's
attention (the same for every row); compiled rows by the cache engine's own report, as hooks
inside a compiled block would be traced into it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from cache_speedup import parse_config
from diffusers.hooks import MagCacheConfig

from core.caching.base import CacheReport
from core.caching.profiles import ProfileStore, transformer_signature
from core.contract.request import GenerationRequest
from core.contract.strategies import MagCacheParams
from core.generation import generate
from core.models import LoadedModel, load_model
from core.models.compile import compile_blocks
from core.settings import get_settings

DEFAULT_ROWS = (
    "plain",
    "none",
    "magcache:threshold=0.12,max_skip_steps=2",
    "teacache:threshold=0.08,use_ret_steps=true",
    "diffusers-magcache:threshold=0.12,max_skip_steps=2",
    "magcache:threshold=0.12,max_skip_steps=4",
    "magcache:threshold=0.24,max_skip_steps=6",
    "easycache",
    "diffusers-magcache:threshold=0.12,max_skip_steps=4",
    "diffusers-magcache:threshold=0.24,max_skip_steps=6",
)
COLUMNS = (
    "row",
    "end to end s",
    "denoise s",
    "calls",
    "e2e vs none",
    "e2e vs plain",
    "denoise vs none",
    "meas./ideal",
    "peak GiB",
)


@dataclass
class Measured:
    end_to_end: float
    denoise: float
    computed: int
    total: int
    peak_bytes: int
    # Total over computed work of the block stack, the blocks a cache always runs counted.
    ideal: float


class CallCounter:
    """Transformer calls, those that ran the middle block, and block calls (the rest came from a cache)."""

    def __init__(self, transformer: torch.nn.Module, blocks: list[torch.nn.Module]) -> None:
        self.layers = len(blocks)
        self.computed = self.total = self.block_calls = 0
        # Plain torch pre-hooks: they run in __call__, around whatever forward the caches install.
        self.handles = [transformer.register_forward_pre_hook(self._call)]
        self.handles += [block.attn1.register_forward_pre_hook(self._block) for block in blocks]
        self.handles.append(blocks[self.layers // 2].attn1.register_forward_pre_hook(self._computed))

    def _call(self, *_: object) -> None:
        self.total += 1

    def _block(self, *_: object) -> None:
        self.block_calls += 1

    def _computed(self, *_: object) -> None:
        self.computed += 1

    def reset(self) -> None:
        self.computed = self.total = self.block_calls = 0

    def remove(self) -> None:
        """Before compiling: a hook inside a compiled block would be traced into its graph."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @property
    def counting(self) -> bool:
        return bool(self.handles)


class Bench:
    def __init__(self, model: LoadedModel, profiles: ProfileStore, base: GenerationRequest) -> None:
        self.model, self.profiles, self.base = model, profiles, base
        self.shape = base.shape(model.family.rules, model.default_shape)
        self.counter = CallCounter(model.transformer, model.family.blocks(model.transformer))
        self.cuda = model.device.type == "cuda"
        self.last_report: CacheReport | None = None

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.model.device)

    def compile(self, backend: str, warmup_steps: int) -> float:
        """Compiles the blocks as ``SKIPSTEP_COMPILE`` does, warms up at this shape; returns the seconds."""
        self.counter.remove()
        started = time.perf_counter()
        compile_blocks(self.model, backend)
        self.warm_up(warmup_steps)
        return time.perf_counter() - started

    def warm_up(self, steps: int) -> None:
        generate(self.model, self.base.model_copy(update={"num_inference_steps": steps}), self.profiles)
        self.synchronize()

    def measure(self, text: str) -> Measured:
        run = self.runner(text)
        self.counter.reset()
        self.last_report = None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.model.device)
        self.synchronize()
        started = time.perf_counter()
        denoise = run()
        self.synchronize()
        end_to_end = time.perf_counter() - started
        peak_bytes = torch.cuda.max_memory_allocated(self.model.device) if self.cuda else 0
        counter = self.counter
        if counter.counting:
            ideal = counter.total * counter.layers / counter.block_calls
            return Measured(end_to_end, denoise, counter.computed, counter.total, peak_bytes, ideal)
        report = self.last_report
        if report is None:
            raise ValueError(f"{text}: compiled rows are skipstep strategies (plain and diffusers rows count by hooks)")
        computed = sum(branch.computed for branch in report.branches.values())
        total = computed + sum(branch.skipped for branch in report.branches.values())
        return Measured(end_to_end, denoise, computed, total, peak_bytes, report.ideal_speedup)

    def runner(self, text: str) -> Callable[[], float]:
        """A call that runs the row once and returns its denoise seconds."""
        strategy, params = parse_config(text)
        if strategy == "plain":
            return self.plain
        if strategy == "diffusers-magcache":
            return lambda: self.diffusers_magcache(MagCacheParams.model_validate(params))
        request = GenerationRequest.model_validate(
            {**self.base.model_dump(), "cache": {"strategy": strategy, "params": params}}
        )
        return lambda: self.skipstep(request)

    def skipstep(self, request: GenerationRequest) -> float:
        result = generate(self.model, request, self.profiles)
        self.last_report = result.cache
        return result.timings.denoising

    def plain(self) -> float:
        """WanPipeline as diffusers documents it, the prompt encoded by its own encode_prompt first."""
        pipe, request, shape = self.model.pipeline, self.base, self.shape
        with torch.no_grad():
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                do_classifier_free_guidance=request.guidance_scale > 1.0,
                # As WanPipeline.__call__ pads prompts it encodes itself (encode_prompt's default is shorter).
                max_sequence_length=self.model.family.max_sequence_length,
                device=self.model.device,
            )
        self.synchronize()
        encoded = time.perf_counter()
        denoised = _LastStep(shape.num_inference_steps, self.synchronize)
        pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            width=shape.width,
            height=shape.height,
            num_frames=shape.num_frames,
            num_inference_steps=shape.num_inference_steps,
            guidance_scale=request.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type="np",
            callback_on_step_end=denoised.step_end,
        )
        return denoised.at - encoded

    def diffusers_magcache(self, params: MagCacheParams) -> float:
        transformer = self.model.transformer
        # The profile skipstep's MagCache picks; diffusers keeps one table for every cache context: cond's.
        profile = self.profiles.nearest(transformer_signature(transformer), self.shape, "magcache")
        ratios = profile.magcache["cond"]
        # diffusers' MagCache reuses the last residual: skipstep's predictor fields have no counterpart there.
        if params.predictor != "reuse":
            raise ValueError("diffusers-magcache: diffusers' MagCache has no predictor")
        settings = params.model_dump(exclude={"predictor", "predictor_order"})
        transformer.enable_cache(
            MagCacheConfig(**settings, num_inference_steps=self.shape.num_inference_steps, mag_ratios=ratios)
        )
        try:
            return self.plain()
        finally:
            transformer.disable_cache()


class _LastStep:
    """A pipeline step callback that takes the time once the last step's work is done, as generation does."""

    def __init__(self, steps: int, synchronize: Callable[[], None]) -> None:
        self.steps, self.synchronize, self.at = steps, synchronize, 0.0

    def step_end(self, _pipe: object, index: int, _timestep: object, _tensors: dict) -> dict:
        if index == self.steps - 1:
            self.synchronize()
            self.at = time.perf_counter()
        return {}


def table_row(
    label: str, row: Measured, none: Measured | None, plain: Measured | None, same_mode_none: Measured | None
) -> str:
    def ratio(reference: Measured | None, attribute: str) -> str:
        return f"{getattr(reference, attribute) / getattr(row, attribute):.2f}x" if reference else "-"

    efficiency = f"{same_mode_none.denoise / row.denoise / row.ideal:.3f}" if same_mode_none else "-"
    cells = (
        label,
        f"{row.end_to_end:.2f}",
        f"{row.denoise:.2f}",
        f"{row.computed}/{row.total}",
        ratio(none, "end_to_end"),
        ratio(plain, "end_to_end"),
        ratio(none, "denoise"),
        efficiency,
        f"{row.peak_bytes / 2**30:.1f}",
    )
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan2.1-1.3b-random")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--prompt", default="a red fox running through snow, cinematic")
    parser.add_argument("--row", action="append", help="plain | NAME[:k=v,...] | diffusers-magcache[:k=v,...]")
    parser.add_argument(
        "--compiled-row", action="append", default=[], help="NAME[:k=v,...], run after the blocks are compiled"
    )
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled rows")
    parser.add_argument("--out", type=Path, help="Markdown file the table is appended to, row by row")
    args = parser.parse_args()

    settings = get_settings()
    started = time.perf_counter()
    model = load_model(args.model, settings)
    built = time.perf_counter() - started
    base = GenerationRequest(
        prompt=args.prompt,
        width=args.width,
        height=args.height,
        num_frames=args.num_frames,
        num_inference_steps=args.steps,
    )
    bench = Bench(model, ProfileStore(settings.profiles_dir), base)
    warm_started = time.perf_counter()
    bench.warm_up(args.warmup_steps)
    warmed = time.perf_counter() - warm_started
    shape = bench.shape

    def emit(line: str, echo: bool = True) -> None:
        if echo:
            print(line)
        if args.out is not None:
            with args.out.open("a") as out:
                out.write(line + "\n")

    emit(
        f"# {model.name} on {torch.cuda.get_device_name(model.device) if bench.cuda else 'CPU'}, "
        f"{model.transformer.dtype}, "
        f"{shape.width}x{shape.height}, {shape.num_frames} frames, {shape.num_inference_steps} steps, "
        f"CFG {base.guidance_scale}; torch {torch.__version__}, diffusers {diffusers.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; build+load {built:.0f} s, "
        f"warm-up ({args.warmup_steps} steps) {warmed:.0f} s"
    )
    emit("")
    emit("| " + " | ".join(COLUMNS) + " |")
    emit("|" + "---|" * len(COLUMNS))
    measured: dict[str, Measured] = {}
    for text in args.row or DEFAULT_ROWS:
        measured[text] = bench.measure(text)
        emit(table_row(f"`{text}`", measured[text], measured.get("none"), measured.get("plain"), measured.get("none")))
    if not args.compiled_row:
        return
    seconds = bench.compile(args.compile_backend, args.warmup_steps)
    note = (
        f"Compiled: compile_repeated_blocks(fullgraph=True, backend={args.compile_backend!r}); compile + warm-up "
        f"({args.warmup_steps} steps at this shape) {seconds:.1f} s, the eager warm-up {warmed:.1f} s."
    )
    print(note)  # at once; the table file gets it below the table
    compiled: dict[str, Measured] = {}
    for text in args.compiled_row:
        compiled[text] = bench.measure(text)
        emit(
            table_row(
                f"`{text}` compiled",
                compiled[text],
                measured.get("none"),
                measured.get("plain"),
                compiled.get("none"),
            )
        )
    emit("", echo=False)
    emit(note, echo=False)


if __name__ == "__main__":
    main()
