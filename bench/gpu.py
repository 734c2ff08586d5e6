"""The GPU headline: every strategy beside plain diffusers, in one process, on one warm model, with the share of
the card's dense bf16 peak that the transformer achieves.

    SKIPSTEP_DEVICE=cuda PYTHONUNBUFFERED=1 python bench/gpu.py [--model wan2.1-1.3b-random]
        [--width 832 --height 480 --num-frames 81 --steps 50] [--row ROW ...] [--repeats N]
        [--attention-backend NAME|best] [--compile-backend inductor] [--out gpu.md]

A row is ``plain`` (diffusers' WanPipeline as documented: native SDPA, eager), a skipstep strategy
``NAME[:k=v,...]`` (as in cache_speedup.py), or diffusers' own MagCache ``diffusers-magcache[:k=v,...]``
(MagCacheParams' names and defaults, the profile's cond ratios); a suffix picks how the transformer runs:

- none: eager blocks (after a compiled row: the compiled blocks bypassed, ``torch.compiler.set_stance
  ("force_eager")``), skipstep rows on ``--attention-backend``;
- ``@compiled``: the blocks compiled through ``core.models.compile`` (``SKIPSTEP_COMPILE``'s path: regional
  ``compile_repeated_blocks(fullgraph=True)``, ``--compile-backend``), compiled and warmed up at the first
  such row, the seconds printed apart;
- ``@fp8``: a second copy of the model loaded with its blocks in FP8 (``SKIPSTEP_FP8_MODELS``'s path:
  torchao float8 dynamic quantization), compiled the same way; where FP8 cannot run the row says why.

``--attention-backend best`` times one transformer call at the bench's shape with each diffusers backend
that runs on this machine and keeps the fastest (the table is printed). Rows run in the order given,
``--repeats`` times (interleaved: the whole list, then again); each measurement is printed and appended to
--out as soon as it is made, so a run stopped at a time limit keeps what it measured; with repeats a
table of medians follows. The prompt cache is off: every row encodes its prompt.

Per row: end-to-end seconds (prompt encoding, denoising, VAE decode to frames; no MP4), denoise seconds,
computed/total transformer calls (a call is computed when its middle block ran), speedups over skipstep
``none`` (the first measured, of any mode) and over ``plain``, measured/ideal (denoise speedup over the
``none`` of the same mode against the block-weighted ideal), achieved TFLOP/s and its share of the card's
dense bf16 peak, PSNR/SSIM against the first ``plain`` or eager ``none`` (bf16, uncached), peak GPU memory.
Eager rows before the first compiled row are counted by torch pre-hooks on the transformer and on every
block's attention; later rows by the cache engine's own report (hooks inside a compiled block would be
traced into it), ``plain`` as every call computed.

TFLOP/s is an analytic count of the transformer's work (``core.models.flops``: per block the attention
projections, ``QK^T`` and ``AV``, cross-attention and the feed-forward; per call the embeddings and the
output head), ``block calls x per-block + calls x outside``, over the denoise seconds (which also hold the
scheduler and the CFG mix, a fraction of a percent). Chipmunk's rows count the dense work its sparse
deltas stand for (its reference path computes that much, and more). Peaks: dense bf16 tensor-core
TFLOP/s without sparsity, from the vendor's data sheets (``PEAK_BF16``).
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import numpy as np
import torch
from cache_speedup import parse_config
from diffusers.hooks import MagCacheConfig

from core.caching.base import CacheReport
from core.caching.profiles import ProfileStore, transformer_signature
from core.contract.request import GenerationRequest
from core.contract.strategies import MagCacheParams
from core.fidelity import psnr, ssim
from core.generation import generate
from core.models import LoadedModel, load_model
from core.models.attention import apply_attention_backend
from core.models.compile import compile_blocks
from core.models.flops import CallFlops, wan_call_flops, wan_tokens
from core.settings import Settings, get_settings

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
# Dense bf16 tensor-core TFLOP/s (no 2:4 sparsity), by a part of the CUDA device name; first match wins.
PEAK_BF16 = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
# Tried by --attention-backend best, where they run.
BACKEND_CANDIDATES = ("native", "_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3", "sage")
COLUMNS = (
    "row",
    "end to end s",
    "denoise s",
    "calls",
    "e2e vs none",
    "e2e vs plain",
    "denoise vs none",
    "meas./ideal",
    "TFLOP/s",
    "% of peak",
    "PSNR",
    "SSIM",
    "peak GiB",
)
MODES = ("eager", "compiled", "fp8")


class Unavailable(Exception):
    """A row that cannot run on this machine (FP8 without a capable GPU or torchao): reported, not measured."""


@dataclass
class Measured:
    end_to_end: float
    denoise: float
    computed: int
    total: int
    peak_bytes: int
    # Total over computed work of the block stack, the blocks a cache always runs counted.
    ideal: float
    block_calls: int
    frames: np.ndarray = field(repr=False)


@dataclass
class Row:
    text: str
    strategy: str
    mode: str

    @classmethod
    def parse(cls, text: str) -> Row:
        spec, _, mode = text.partition("@")
        mode = mode or "eager"
        if mode not in MODES:
            raise SystemExit(f"{text}: the suffix is @compiled or @fp8, not @{mode}")
        strategy = parse_config(spec)[0]
        if mode != "eager" and strategy in ("plain", "diffusers-magcache"):
            raise SystemExit(f"{text}: diffusers' own rows run eager")
        return cls(text, strategy, mode)

    @property
    def uncached_bf16(self) -> bool:
        return self.mode == "eager" and self.strategy in ("plain", "none")


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
    def __init__(self, model: LoadedModel, settings: Settings, base: GenerationRequest, args: argparse.Namespace):
        self.model, self.settings, self.base, self.args = model, settings, base, args
        self.profiles = ProfileStore(settings.profiles_dir)
        self.shape = base.shape(model.family.rules, model.default_shape)
        self.counter = CallCounter(model.transformer, model.family.blocks(model.transformer))
        self.cuda = model.device.type == "cuda"
        self.fp8_model: LoadedModel | None = None
        self.last_report: CacheReport | None = None
        # Rows counted by hooks, by their first pass: later passes (hooks gone once compiled) run the same schedule.
        self.hook_counts: dict[str, Measured] = {}
        pipeline = model.pipeline
        tokens = wan_tokens(
            model.transformer.config, self.shape, pipeline.vae_scale_factor_temporal, pipeline.vae_scale_factor_spatial
        )
        self.flops = wan_call_flops(model.transformer, tokens, model.family.max_sequence_length)
        self.notes: list[str] = []

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.model.device)

    def warm_up(self, model: LoadedModel, steps: int) -> None:
        generate(model, self.base.model_copy(update={"num_inference_steps": steps}), self.profiles)
        self.synchronize()

    def compile(self) -> None:
        """The main model's blocks compiled as ``SKIPSTEP_COMPILE`` compiles them, warmed up at this shape."""
        self.counter.remove()
        started = time.perf_counter()
        compile_blocks(self.model, self.args.compile_backend)
        self.warm_up(self.model, self.args.warmup_steps)
        self.note(
            f"Compiled: compile_repeated_blocks(fullgraph=True, backend={self.args.compile_backend!r}); compile + "
            f"warm-up ({self.args.warmup_steps} steps at this shape) {time.perf_counter() - started:.1f} s."
        )

    def load_fp8(self) -> LoadedModel:
        """A second copy of the model, its blocks in FP8 as SKIPSTEP_FP8_MODELS loads them, compiled, warmed up."""
        started = time.perf_counter()
        settings = self.settings.model_copy(update={"fp8_models": self.model.name})
        model = load_model(self.model.name, settings)
        if model.precision.used != "fp8":
            raise Unavailable(f"FP8 cannot run here: {model.precision.fallback_reason}")
        apply_attention_backend(model.transformer, self.model.attention.used)
        try:
            compile_blocks(model, self.args.compile_backend)
            self.warm_up(model, self.args.warmup_steps)
        except Exception as exc:  # the rows after it still run
            traceback.print_exc()
            raise Unavailable(f"FP8 blocks failed to compile or run: {type(exc).__name__}: {exc}") from exc
        self.note(
            f"FP8: a second copy of the model, blocks quantized by torchao (Float8DynamicActivationFloat8Weight, "
            f"per-row scales), compiled ({self.args.compile_backend}); load + compile + warm-up "
            f"{time.perf_counter() - started:.1f} s."
        )
        return model

    def note(self, line: str) -> None:
        print(line)
        self.notes.append(line)

    def model_for(self, row: Row) -> LoadedModel:
        if row.mode == "eager":
            return self.model
        if row.mode == "compiled":
            if not self.model.compiled:
                self.compile()
            return self.model
        if self.fp8_model is None:
            self.fp8_model = self.load_fp8()
        return self.fp8_model

    def measure(self, row: Row) -> Measured:
        model = self.model_for(row)
        # Eager rows on a compiled model bypass the compiled blocks.
        stance = torch.compiler.set_stance("force_eager") if row.mode == "eager" and model.compiled else nullcontext()
        run = self.runner(row, model)
        self.counter.reset()
        self.last_report = None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(model.device)
        with stance:
            self.synchronize()
            started = time.perf_counter()
            denoise, frames = run()
            self.synchronize()
            end_to_end = time.perf_counter() - started
        peak_bytes = torch.cuda.max_memory_allocated(model.device) if self.cuda else 0
        counter, layers = self.counter, self.counter.layers
        if counter.counting:
            ideal = counter.total * layers / counter.block_calls
            self.hook_counts[row.text] = Measured(
                end_to_end, denoise, counter.computed, counter.total, peak_bytes, ideal, counter.block_calls, frames
            )
            return self.hook_counts[row.text]
        if row.text in self.hook_counts:
            counted = self.hook_counts[row.text]
            return Measured(
                end_to_end,
                denoise,
                counted.computed,
                counted.total,
                peak_bytes,
                counted.ideal,
                counted.block_calls,
                frames,
            )
        if row.strategy == "plain":
            calls = self.shape.num_inference_steps * len(model.family.branches(self.base.guidance_scale > 1.0))
            return Measured(end_to_end, denoise, calls, calls, peak_bytes, 1.0, calls * layers, frames)
        report = self.last_report
        if report is None:
            raise SystemExit(f"{row.text}: diffusers' rows count by hooks: put them before the first compiled row")
        computed = sum(branch.computed for branch in report.branches.values())
        total = computed + sum(branch.skipped for branch in report.branches.values())
        return Measured(
            end_to_end, denoise, computed, total, peak_bytes, report.ideal_speedup, computed * layers, frames
        )

    def runner(self, row: Row, model: LoadedModel) -> Callable[[], tuple[float, np.ndarray]]:
        """A call that runs the row once and returns its denoise seconds and frames."""
        strategy, params = parse_config(row.text.partition("@")[0])
        if strategy == "plain":
            return lambda: self.plain(model)
        if strategy == "diffusers-magcache":
            return lambda: self.diffusers_magcache(model, MagCacheParams.model_validate(params))
        request = GenerationRequest.model_validate(
            {**self.base.model_dump(), "cache": {"strategy": strategy, "params": params}}
        )
        return lambda: self.skipstep(model, request)

    def skipstep(self, model: LoadedModel, request: GenerationRequest) -> tuple[float, np.ndarray]:
        result = generate(model, request, self.profiles)
        self.last_report = result.cache
        return result.timings.denoising, result.frames

    def plain(self, model: LoadedModel) -> tuple[float, np.ndarray]:
        """WanPipeline as diffusers documents it (native SDPA), the prompt encoded by its own encode_prompt first."""
        pipe, request, shape = model.pipeline, self.base, self.shape
        with native_attention(model):
            with torch.no_grad():
                prompt_embeds, negative_embeds = pipe.encode_prompt(
                    prompt=request.prompt,
                    negative_prompt=request.negative_prompt,
                    do_classifier_free_guidance=request.guidance_scale > 1.0,
                    # As WanPipeline.__call__ pads prompts it encodes itself (encode_prompt's default is shorter).
                    max_sequence_length=model.family.max_sequence_length,
                    device=model.device,
                )
            self.synchronize()
            encoded = time.perf_counter()
            denoised = _LastStep(shape.num_inference_steps, self.synchronize)
            output = pipe(
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
        return denoised.at - encoded, np.asarray(output.frames[0], dtype=np.float32)

    def diffusers_magcache(self, model: LoadedModel, params: MagCacheParams) -> tuple[float, np.ndarray]:
        transformer = model.transformer
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
            return self.plain(model)
        finally:
            transformer.disable_cache()

    def tflops(self, row: Measured) -> float:
        flops: CallFlops = self.flops
        return (row.block_calls * flops.per_block + row.total * flops.outside) / row.denoise / 1e12


@contextmanager
def native_attention(model: LoadedModel) -> Iterator[None]:
    """Plain diffusers runs PyTorch's SDPA, whatever backend the bench chose for skipstep's rows."""
    chosen = model.attention.used
    if chosen != "native":
        apply_attention_backend(model.transformer, "native")
    try:
        yield
    finally:
        if chosen != "native":
            apply_attention_backend(model.transformer, chosen)


class _LastStep:
    """A pipeline step callback that takes the time once the last step's work is done, as generation does."""

    def __init__(self, steps: int, synchronize: Callable[[], None]) -> None:
        self.steps, self.synchronize, self.at = steps, synchronize, 0.0

    def step_end(self, _pipe: object, index: int, _timestep: object, _tensors: dict) -> dict:
        if index == self.steps - 1:
            self.synchronize()
            self.at = time.perf_counter()
        return {}


def fastest_backend(bench: Bench, candidates: tuple[str, ...]) -> str:
    """Of the diffusers backends that run here, the one whose transformer call at the bench's shape is fastest."""
    model, shape = bench.model, bench.shape
    transformer, config = model.transformer, model.transformer.config
    latents = torch.randn(
        1,
        config.in_channels,
        (shape.num_frames - 1) // model.pipeline.vae_scale_factor_temporal + 1,
        shape.height // model.pipeline.vae_scale_factor_spatial,
        shape.width // model.pipeline.vae_scale_factor_spatial,
        device=model.device,
        dtype=transformer.dtype,
    )
    text = torch.randn(1, model.family.max_sequence_length, config.text_dim, device=model.device, dtype=latents.dtype)
    timestep = torch.tensor([500.0], device=model.device)
    seconds: dict[str, float] = {}
    for name in candidates:
        if apply_attention_backend(transformer, name).used != name:
            continue
        times = []
        for _ in range(3):  # the first call loads the kernel
            bench.synchronize()
            started = time.perf_counter()
            with torch.no_grad():
                transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)
            bench.synchronize()
            times.append(time.perf_counter() - started)
        seconds[name] = min(times[1:])
    best = min(seconds, key=seconds.__getitem__)
    bench.note(
        "Attention backends, one transformer call at this shape (best of 2 after one to load): "
        + ", ".join(f"{name} {value * 1000:.0f} ms" for name, value in seconds.items())
        + f"; using {best}."
    )
    return best


def peak_tflops(model: LoadedModel) -> tuple[str, float | None]:
    if model.device.type != "cuda":
        return "CPU", None
    name = torch.cuda.get_device_name(model.device)
    return name, next((peak for part, peak in PEAK_BF16 if part in name), None)


def note_reference(reference: dict[str, Measured], row: Row, measured: Measured) -> None:
    """What later rows are compared with: the first plain, none, none of each mode, and bf16 uncached frames."""
    if row.uncached_bf16:
        reference.setdefault("frames", measured)
    if row.strategy in ("plain", "none"):
        reference.setdefault(row.strategy, measured)
    if row.strategy == "none":
        reference.setdefault(f"none@{row.mode}", measured)


def table_row(
    label: str, row: Row, measured: Measured, bench: Bench, reference: dict[str, Measured], peak: float | None
) -> str:
    def ratio(against: Measured | None, attribute: str) -> str:
        return f"{getattr(against, attribute) / getattr(measured, attribute):.2f}x" if against else "-"

    same_mode_none = reference.get(f"none@{row.mode}") if row.strategy != "plain" else None
    efficiency = f"{same_mode_none.denoise / measured.denoise / measured.ideal:.3f}" if same_mode_none else "-"
    tflops = bench.tflops(measured)
    baseline = reference.get("frames")
    fidelity = ("-", "-")
    if baseline is not None:
        fidelity = (f"{psnr(measured.frames, baseline.frames):.2f}", f"{ssim(measured.frames, baseline.frames):.4f}")
    cells = (
        label,
        f"{measured.end_to_end:.2f}",
        f"{measured.denoise:.2f}",
        f"{measured.computed}/{measured.total}",
        ratio(reference.get("none"), "end_to_end"),
        ratio(reference.get("plain"), "end_to_end"),
        ratio(reference.get("none"), "denoise"),
        efficiency,
        f"{tflops:.3g}",
        f"{100 * tflops / peak:.1f}" if peak else "-",
        *fidelity,
        f"{measured.peak_bytes / 2**30:.1f}",
    )
    return "| " + " | ".join(cells) + " |"


def median_of(runs: list[Measured]) -> Measured:
    first = runs[0]
    return Measured(
        statistics.median(run.end_to_end for run in runs),
        statistics.median(run.denoise for run in runs),
        first.computed,
        first.total,
        max(run.peak_bytes for run in runs),
        first.ideal,
        first.block_calls,
        first.frames,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan2.1-1.3b-random")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--prompt", default="a red fox running through snow, cinematic")
    parser.add_argument("--row", action="append", help="plain | NAME[:k=v,...] | diffusers-magcache[:k=v,...], @mode")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the rows, interleaved")
    parser.add_argument(
        "--attention-backend", help="diffusers backend of skipstep's rows, or best (default: the setting's)"
    )
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of @compiled/@fp8 rows")
    parser.add_argument("--out", type=Path, help="Markdown file the table is appended to, row by row")
    args = parser.parse_args()
    rows = [Row.parse(text) for text in args.row or DEFAULT_ROWS]

    # Every row encodes its prompt, as plain diffusers does.
    settings = get_settings().model_copy(update={"prompt_cache_size": 0})
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
    bench = Bench(model, settings, base, args)
    warm_started = time.perf_counter()
    bench.warm_up(model, args.warmup_steps)
    warmed = time.perf_counter() - warm_started
    if args.attention_backend == "best":
        model.attention = apply_attention_backend(model.transformer, fastest_backend(bench, BACKEND_CANDIDATES))
    elif args.attention_backend:
        model.attention = apply_attention_backend(model.transformer, args.attention_backend)
        if model.attention.fallback_reason:
            bench.note(
                f"Attention backend {args.attention_backend!r} fell back to native: {model.attention.fallback_reason}"
            )
    shape, (card, peak) = bench.shape, peak_tflops(model)

    def emit(line: str, echo: bool = True) -> None:
        if echo:
            print(line)
        if args.out is not None:
            with args.out.open("a") as out:
                out.write(line + "\n")

    emit(
        f"# {model.name} on {card}, {model.transformer.dtype}, "
        f"{shape.width}x{shape.height}, {shape.num_frames} frames, {shape.num_inference_steps} steps, "
        f"CFG {base.guidance_scale}; attention {model.attention.used}; torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; build+load {built:.0f} s, "
        f"warm-up ({args.warmup_steps} steps) {warmed:.0f} s; dense bf16 peak "
        f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown'}; {bench.flops.per_call / 1e12:.2f} TFLOP per full call"
    )
    emit("")
    emit("| " + " | ".join(COLUMNS) + " |")
    emit("|" + "---|" * len(COLUMNS))
    reference: dict[str, Measured] = {}
    runs: dict[str, list[Measured]] = {row.text: [] for row in rows}
    unavailable: dict[str, str] = {}
    for repeat in range(args.repeats):
        for row in rows:
            if row.text in unavailable:
                continue
            try:
                measured = bench.measure(row)
            except Unavailable as exc:
                unavailable[row.text] = str(exc)
                emit(f"| `{row.text}` | not run: {exc} |" + " |" * (len(COLUMNS) - 2))
                continue
            runs[row.text].append(measured)
            note_reference(reference, row, measured)
            label = f"`{row.text}`" + (f" pass {repeat + 1}" if args.repeats > 1 else "")
            emit(table_row(label, row, measured, bench, reference, peak))
    if args.repeats > 1:
        emit("")
        emit(f"Medians of {args.repeats} passes:")
        emit("")
        emit("| " + " | ".join(COLUMNS) + " |")
        emit("|" + "---|" * len(COLUMNS))
        medians: dict[str, Measured] = {}
        for row in rows:
            if row.text in unavailable:
                continue
            measured = median_of(runs[row.text])
            note_reference(medians, row, measured)
            emit(table_row(f"`{row.text}`", row, measured, bench, medians, peak))
    emit("", echo=False)
    for line in bench.notes:
        emit(line, echo=False)


if __name__ == "__main__":
    main()
