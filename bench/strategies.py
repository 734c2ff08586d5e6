"""Every skipstep strategy beside plain diffusers, diffusers' own caches and cache-dit, in one process.

    python bench/strategies.py [--model wan-tiny] [--width 128 --height 128 --num-frames 17 --steps 20] [--prompt P]
                               [--repeats 3] [--only LABEL ...] [--compile] [--out FILE.md]
    SKIPSTEP_DEVICE=cuda python bench/strategies.py --gpu [--warmup first] ...

One model, one prompt and seed. After a warm-up run of every row, each repeat runs every row in
turn (interleaved, so drift hits all alike); the table has medians over the repeats. Rows:
plain ``WanPipeline`` (no hooks at all), skipstep ``none`` and each strategy at two settings,
diffusers' MagCache (skipstep's calibrated ratios), FirstBlockCache, TaylorSeer and SeaCache,
and cache-dit's DBCache with and without its TaylorSeer calibrator (``pip install -e '.[bench]'``;
without it those rows are left out). ``--compile`` adds rows with the blocks compiled
(``compile_repeated_blocks``, inductor) after the eager ones. ``--gpu``: the same table at the full
Wan2.1-1.3B shapes (the ``wan2.1-1.3b-random`` preset, built on the device; 832x480, 81 frames, 50
steps); there ``--warmup first`` warms up with the plain row alone, as every row runs the same kernels.
The GPU headline with end-to-end times is ``bench/gpu.py``'s.

Columns: full transformer calls computed / total (a call counts as computed when its middle
block ran), the block-weighted ideal speedup (block calls uncached / block calls run), median
denoise seconds and their spread (min-max), the speedup over plain, measured / ideal, and
PSNR/SSIM of the decoded frames against plain's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from core.caching.magcache import nearest_interp
from core.caching.profiles import ProfileStore, transformer_signature
from core.caching.registry import build_cache
from core.contract.request import GenerationRequest
from core.errors import CacheConfigError
from core.fidelity import psnr, ssim
from core.generation import expert_caches, run
from core.models import LoadedModel, load_model
from core.models.compile import compile_blocks
from core.settings import Settings, get_settings

SKIPSTEP = (
    ("none", {}),
    ("teacache", {}),
    ("teacache", {"threshold": 0.4}),
    ("magcache", {"threshold": 0.12, "max_skip_steps": 2}),
    ("magcache", {"threshold": 0.24, "max_skip_steps": 6}),
    ("magcache", {"threshold": 0.24, "max_skip_steps": 6, "predictor": "taylorseer"}),
    ("easycache", {}),
    ("easycache", {"threshold": 0.2}),
    ("easycache", {"threshold": 0.4}),
    ("fbcache", {"threshold": 0.05}),
    ("fbcache", {"threshold": 0.2}),
    ("dbcache", {}),
    ("dbcache", {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "residual_diff_threshold": 0.08}),
    ("dbcache", {"Fn_compute_blocks": 2, "Bn_compute_blocks": 1, "residual_diff_threshold": 0.2}),
    (
        "dbcache",
        {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "residual_diff_threshold": 0.08, "predictor": "taylorseer"},
    ),
    ("taocache", {}),
    ("taocache", {"early": "magcache"}),
    ("taylorseer", {}),
    ("taylorseer", {"warmup_steps": 3, "interval": 3, "order": 2}),
)
# --gpu: model, width, height, frames, steps.
GPU_SHAPE = ("wan2.1-1.3b-random", 832, 480, 81, 50)
# cache-dit's rows: the same settings as skipstep's dbcache rows.
CACHE_DIT = (
    ({"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "residual_diff_threshold": 0.08}, 0),
    ({"Fn_compute_blocks": 2, "Bn_compute_blocks": 1, "residual_diff_threshold": 0.2}, 0),
    ({"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "residual_diff_threshold": 0.08}, 1),
)


@dataclass
class Outcome:
    frames: np.ndarray
    seconds: float
    computed: int
    total: int
    block_calls: int


@dataclass
class Row:
    label: str
    family: str
    go: Callable[[], Outcome]
    outcomes: list[Outcome] = field(default_factory=list)
    refused: str | None = None

    def take(self) -> None:
        """One run, unless the model refused the row's setting (then never again)."""
        if self.refused is not None:
            return
        try:
            self.outcomes.append(self.go())
        except CacheConfigError as exc:
            self.refused = str(exc)


class BlockCounter:
    """Counts, per transformer call, which blocks' attention actually ran (hooks on their q projections); with two
    experts (Wan2.2 A14B), the calls of both."""

    def __init__(self, model: LoadedModel) -> None:
        self.calls: list[set[int]] = []
        self.handles = []
        for _, transformer in model.experts:
            blocks = model.family.blocks(transformer)
            self.layers = len(blocks)
            self.handles.append(transformer.register_forward_pre_hook(lambda *_: self.calls.append(set())))
            for index, block in enumerate(blocks):
                self.handles.append(block.attn1.to_q.register_forward_hook(self._ran(index)))

    def _ran(self, index: int) -> Callable[..., None]:
        return lambda *_: self.calls[-1].add(index)

    def reset(self) -> None:
        self.calls = []

    def figures(self) -> tuple[int, int, int]:
        middle = self.layers // 2
        computed = sum(middle in call for call in self.calls)
        return computed, len(self.calls), sum(len(call) for call in self.calls)


class Bench:
    def __init__(self, model: LoadedModel, settings: Settings, request: GenerationRequest) -> None:
        self.model, self.request = model, request
        self.shape = request.shape(model.family.rules, model.default_shape)
        self.profiles = ProfileStore(settings.profiles_dir)
        self.counter = BlockCounter(model)
        do_cfg = request.guidance_scale > 1.0
        with torch.no_grad():
            self.prompts = model.family.encode_prompt(
                model.pipeline, request.prompt, request.negative_prompt, do_cfg, model.device
            )

    def _sync(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()

    def pipeline(self) -> Outcome:
        """The model's own pipeline, timed from its call to the end of its last step, as skipstep's runs are."""
        shape, ended = self.shape, []

        def step_end(_pipe: object, index: int, _t: object, _tensors: dict) -> dict:
            if index == shape.num_inference_steps - 1:
                self._sync()
                ended.append(time.perf_counter())
            return {}

        self.counter.reset()
        self._sync()
        started = time.perf_counter()
        output = self.model.pipeline(
            **self.prompts,
            width=shape.width,
            height=shape.height,
            num_frames=shape.num_frames,
            num_inference_steps=shape.num_inference_steps,
            guidance_scale=self.request.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(self.request.seed),
            output_type="np",
            callback_on_step_end=step_end,
        )
        return Outcome(np.asarray(output.frames[0], dtype=np.float32), ended[0] - started, *self.counter.figures())

    def skipstep(self, strategy: str, params: dict) -> Outcome:
        request = GenerationRequest.model_validate(
            self.request.model_dump() | {"cache": {"strategy": strategy, "params": params}}
        )
        caches = expert_caches(
            self.model,
            self.shape,
            lambda transformer, expert: build_cache(request.cache, transformer, self.shape, self.profiles, expert),
        )
        self.counter.reset()
        result = run(self.model, request, self.shape, caches)
        return Outcome(result.frames, result.timings.denoising, *self.counter.figures())

    def diffusers(self, config: object) -> Outcome:
        self.model.transformer.enable_cache(config)
        try:
            return self.pipeline()
        finally:
            self.model.transformer.disable_cache()

    def cache_dit(self, params: dict, taylorseer_order: int) -> Outcome:
        import cache_dit
        from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

        calibrator = TaylorSeerCalibratorConfig(taylorseer_order=taylorseer_order) if taylorseer_order else None
        cache_dit.enable_cache(
            self.model.pipeline,
            cache_config=DBCacheConfig(num_inference_steps=self.shape.num_inference_steps, **params),
            calibrator_config=calibrator,
        )
        try:
            return self.pipeline()
        finally:
            cache_dit.disable_cache(self.model.pipeline)

    def magcache_ratios(self) -> list[float]:
        profile = self.profiles.nearest(transformer_signature(self.model.transformer), self.shape, "magcache")
        return nearest_interp(profile.magcache["cond"], self.shape.num_inference_steps)


def rows(bench: Bench, compiled: bool) -> list[Row]:
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, SeaCacheConfig, TaylorSeerCacheConfig

    steps = bench.shape.num_inference_steps
    suffix = " (compiled)" if compiled else ""
    found = [Row(type(bench.model.pipeline).__name__ + suffix, "plain", bench.pipeline)]
    for strategy, params in SKIPSTEP:
        if compiled and strategy not in ("none", "fbcache", "magcache"):
            continue
        label = strategy + "".join(f" {k}={v}" for k, v in params.items()) + suffix
        found.append(Row(label, strategy, lambda s=strategy, p=params: bench.skipstep(s, p)))
    if compiled or len(bench.model.experts) > 1:
        # diffusers' and cache-dit's caches hook one transformer: they have no rows for two experts.
        return found
    peers = [
        (
            "diffusers MagCache 0.12 K2",
            "magcache",
            MagCacheConfig(
                threshold=0.12, max_skip_steps=2, num_inference_steps=steps, mag_ratios=bench.magcache_ratios()
            ),
        ),
        ("diffusers FirstBlockCache 0.05", "fbcache", FirstBlockCacheConfig(threshold=0.05)),
        ("diffusers FirstBlockCache 0.2", "fbcache", FirstBlockCacheConfig(threshold=0.2)),
        (
            "diffusers TaylorSeer lite (3, 5, order 1)",
            "taylorseer",
            TaylorSeerCacheConfig(use_lite_mode=True, taylor_factors_dtype=torch.float32),
        ),
        ("diffusers SeaCache (defaults)", "seacache", SeaCacheConfig()),
    ]
    found += [Row(label, family, lambda c=config: bench.diffusers(c)) for label, family, config in peers]
    try:
        import cache_dit  # noqa: F401
    except ImportError:
        return found
    for params, order in CACHE_DIT:
        label = (
            f"cache-dit DBCache F{params['Fn_compute_blocks']}B{params['Bn_compute_blocks']} "
            f"{params['residual_diff_threshold']}" + (f" + TaylorSeer order {order}" if order else "")
        )
        found.append(Row(label, "dbcache", lambda p=params, o=order: bench.cache_dit(p, o)))
    return found


def measure(table: list[Row], repeats: int, warm_up_every_row: bool = True) -> None:
    for row in table if warm_up_every_row else table[:1]:
        row.take()
        row.outcomes.clear()
    for _ in range(repeats):
        for row in table:
            row.take()


def report(table: list[Row], header: str) -> str:
    plain = table[0]
    base = statistics.median(o.seconds for o in plain.outcomes)
    layers_total = None
    lines = [
        header,
        "",
        "| row | calls computed/total | ideal (blocks) | denoise s median | spread | speedup | measured/ideal "
        "| PSNR | SSIM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        if row.refused is not None:
            continue
        last = row.outcomes[-1]
        times = [o.seconds for o in row.outcomes]
        median = statistics.median(times)
        if layers_total is None:
            layers_total = last.block_calls
        ideal = layers_total / last.block_calls
        speedup = base / median
        quality = (
            ("inf", "1.000")
            if row is plain
            else (
                f"{psnr(last.frames, plain.outcomes[-1].frames):.2f}",
                f"{ssim(last.frames, plain.outcomes[-1].frames):.3f}",
            )
        )
        lines.append(
            f"| {row.label} | {last.computed}/{last.total} | {ideal:.2f}x | {median:.2f} | {min(times):.2f}-"
            f"{max(times):.2f} | {speedup:.2f}x | {speedup / ideal:.2f} | {quality[0]} | {quality[1]} |"
        )
    refused = [f"- {row.label}: refused by the model ({row.refused})" for row in table if row.refused is not None]
    return "\n".join(lines + (["", *refused] if refused else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan-tiny")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompt", default="a red fox running through snow, cinematic")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", action="append", help="keep rows whose label starts with this (plain always)")
    parser.add_argument("--compile", action="store_true", help="also rows with the blocks compiled (inductor)")
    parser.add_argument("--out", help="also write the table (markdown) here")
    parser.add_argument("--gpu", action="store_true", help="Wan2.1-1.3B's shapes (sets the five options above)")
    parser.add_argument(
        "--warmup", choices=("every", "first"), default="every", help="warm up every row once, or the first only"
    )
    args = parser.parse_args()
    if args.gpu:
        args.model, args.width, args.height, args.num_frames, args.steps = GPU_SHAPE

    settings = get_settings()
    model = load_model(args.model, settings)
    request = GenerationRequest(
        prompt=args.prompt,
        width=args.width,
        height=args.height,
        num_frames=args.num_frames,
        num_inference_steps=args.steps,
        seed=0,
    )
    bench = Bench(model, settings, request)
    table = [
        row
        for row in rows(bench, compiled=False)
        if not args.only or row.family == "plain" or any(row.label.startswith(prefix) for prefix in args.only)
    ]
    measure(table, args.repeats, args.warmup == "every")
    if args.compile:
        compile_blocks(model, "inductor")
        compiled = rows(bench, compiled=True)
        measure(compiled, args.repeats, args.warmup == "every")
        table += compiled
    shape = bench.shape
    header = (
        f"# {model.name} on {model.device} ({torch.get_num_threads()} threads), {shape.width}x{shape.height}, "
        f"{shape.num_frames} frames, {shape.num_inference_steps} steps, CFG {request.guidance_scale}, "
        f"{args.repeats} interleaved repeat(s) after a warm-up of {args.warmup} row, {time.strftime('%Y-%m-%d')}"
    )
    text = report(table, header)
    print(text)
    if args.out:
        with open(args.out, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
