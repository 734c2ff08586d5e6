"""The GPU headline: every strategy beside plain diffusers, in one process, on one warm model.

    SKIPSTEP_DEVICE=cuda PYTHONUNBUFFERED=1 python bench/gpu.py [--model wan2.1-1.3b-random]
        [--width 832 --height 480 --num-frames 81 --steps 50] [--row ROW ...] [--out gpu.md]

Builds the preset once (on the GPU: random initialisation there takes seconds), warms up with a
short run at the full shape, then measures one row after another: plain diffusers WanPipeline,
skipstep's strategies (``NAME[:k=v,...]`` as in cache_speedup.py) and diffusers' own MagCache
(``diffusers-magcache[:k=v,...]``, MagCacheParams' names and defaults, the profile's cond ratios).
Rows run in the order given, most important first, and each is printed and appended to --out as
soon as it is measured, so a run stopped at a time limit keeps what it measured.

Per row: end-to-end seconds (prompt encoding, denoising, VAE decode to frames; no MP4), denoise
seconds, computed/total transformer calls (counted at the first block's attention and at the
transformer), speedups over skipstep ``none`` and over plain WanPipeline, measured/ideal (denoise
speedup over ``none`` against total/computed calls) and peak GPU memory.
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

from core.caching.profiles import ProfileStore, transformer_signature
from core.contract.request import GenerationRequest
from core.contract.strategies import MagCacheParams
from core.generation import generate
from core.models import LoadedModel, load_model
from core.models.loading import resolve_device
from core.models.presets import PRESETS, ensure_preset
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

    @property
    def ideal(self) -> float:
        return self.total / self.computed


class CallCounter:
    """Transformer calls, and those that ran the first block (the others were served from a cache)."""

    def __init__(self, transformer: torch.nn.Module, first_block: torch.nn.Module) -> None:
        self.computed = self.total = 0
        # Plain torch pre-hooks: they run in __call__, around whatever forward the caches install.
        transformer.register_forward_pre_hook(self._call)
        first_block.attn1.register_forward_pre_hook(self._computed)

    def _call(self, *_: object) -> None:
        self.total += 1

    def _computed(self, *_: object) -> None:
        self.computed += 1

    def reset(self) -> None:
        self.computed = self.total = 0


class Bench:
    def __init__(self, model: LoadedModel, profiles: ProfileStore, base: GenerationRequest) -> None:
        self.model, self.profiles, self.base = model, profiles, base
        self.shape = base.shape(model.family.rules, model.default_shape)
        self.counter = CallCounter(model.transformer, model.family.blocks(model.transformer)[0])
        self.cuda = model.device.type == "cuda"

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.model.device)

    def measure(self, text: str) -> Measured:
        run = self.runner(text)
        self.counter.reset()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.model.device)
        self.synchronize()
        started = time.perf_counter()
        denoise = run()
        self.synchronize()
        end_to_end = time.perf_counter() - started
        return Measured(
            end_to_end=end_to_end,
            denoise=denoise,
            computed=self.counter.computed,
            total=self.counter.total,
            peak_bytes=torch.cuda.max_memory_allocated(self.model.device) if self.cuda else 0,
        )

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
        return lambda: generate(self.model, request, self.profiles).timings.denoising

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
        transformer.enable_cache(
            MagCacheConfig(**params.model_dump(), num_inference_steps=self.shape.num_inference_steps, mag_ratios=ratios)
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


def table_row(text: str, row: Measured, none: Measured | None, plain: Measured | None) -> str:
    def ratio(reference: Measured | None, attribute: str) -> str:
        return f"{getattr(reference, attribute) / getattr(row, attribute):.2f}x" if reference else "-"

    efficiency = f"{none.denoise / row.denoise / row.ideal:.3f}" if none else "-"
    cells = (
        f"`{text}`",
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
    parser.add_argument("--out", type=Path, help="Markdown file the table is appended to, row by row")
    args = parser.parse_args()

    settings = get_settings()
    started = time.perf_counter()
    if args.model in PRESETS:
        # Parameters created on the device: random initialisation there takes seconds, not a minute.
        with torch.device(resolve_device(settings.device)):
            ensure_preset(args.model, settings.presets_dir)
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
    warmup = bench.base.model_copy(update={"num_inference_steps": args.warmup_steps})
    warm_started = time.perf_counter()
    generate(model, warmup, bench.profiles)
    bench.synchronize()
    shape = bench.shape

    def emit(line: str) -> None:
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
        f"warm-up ({args.warmup_steps} steps) {time.perf_counter() - warm_started:.0f} s"
    )
    emit("")
    emit("| " + " | ".join(COLUMNS) + " |")
    emit("|" + "---|" * len(COLUMNS))
    measured: dict[str, Measured] = {}
    for text in args.row or DEFAULT_ROWS:
        measured[text] = bench.measure(text)
        emit(table_row(text, measured[text], measured.get("none"), measured.get("plain")))


if __name__ == "__main__":
    main()
