"""``skipstep generate | calibrate | frontier | profiles``: the engine, without the service. The engine
(torch, diffusers) is imported inside each command, never when the command line starts."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.cli.request import add_lora_option, add_request_options, parse_loras, request_fields
from core.contract.request import GenerationRequest
from core.settings import Settings

if TYPE_CHECKING:
    from PIL import Image

    from core.caching.base import CacheReport
    from core.contract.shapes import Shape
    from core.generation import GenerationResult
    from core.models import LoadedModel

DEFAULT_CALIBRATION_PROMPTS = (
    "a cat walking on a sunny street, cinematic",
    "aerial view of a mountain river at dawn",
    "a red car driving through a neon city at night",
)


def add_commands(commands: Any, settings: Settings) -> None:
    gen = commands.add_parser("generate", help="generate one video")
    _add_model(gen, settings)
    add_request_options(gen, GenerationRequest)
    _add_image(gen)
    gen.add_argument("--out", type=Path, required=True, metavar="FILE.mp4")
    gen.set_defaults(run=_generate)

    cal = commands.add_parser("calibrate", help="record a calibration profile for a model and shape")
    _add_model_and_shape(cal, settings)
    _add_image(cal)
    cal.add_argument("--prompts", type=Path, metavar="FILE", help="one prompt per line (default: 3 built in)")
    cal.add_argument("--name", help="profile name (default: MODEL-WxHxF-Nsteps)")
    cal.add_argument("--guidance-scale", type=float, default=5.0)
    cal.add_argument("--seed", type=int, default=0)
    add_lora_option(cal)
    cal.set_defaults(run=_calibrate)

    front = commands.add_parser(
        "frontier", help="measure the speed/fidelity frontier of a model at one shape and store it for `auto` jobs"
    )
    _add_model_and_shape(front, settings)
    _add_image(front)
    front.add_argument("--prompts", type=Path, metavar="FILE", help="one prompt per line (default: 3 built in)")
    front.add_argument(
        "--setting",
        action="append",
        metavar="STRATEGY[:NAME=VALUE,...]",
        help="a setting to measure, repeatable (default: every strategy at 3 settings, core/frontier.py)",
    )
    front.add_argument("--guidance-scale", type=float, default=5.0)
    front.add_argument("--seed", type=int, default=0)
    front.add_argument("--json", type=Path, metavar="FILE", help="also write the frontier here as JSON")
    add_lora_option(front)
    front.set_defaults(run=_frontier)

    profiles = commands.add_parser("profiles", help="list calibration profiles")
    profiles.set_defaults(run=_profiles)


def _add_model(parser: argparse.ArgumentParser, settings: Settings) -> None:
    parser.add_argument(
        "--model", default=settings.model, help=f"preset, model directory or hub id (default {settings.model})"
    )


def _add_image(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image",
        type=Path,
        metavar="FILE",
        help="an image-to-video model's first frame (PNG, JPEG or WebP), fitted to the video's size as a job's is; "
        "every run starts from it",
    )


def _first_frame(args: argparse.Namespace, model: LoadedModel, shape: Shape, settings: Settings) -> Image.Image | None:
    from core.errors import InvalidRequest
    from core.images import read_first_frame

    if args.image is None:
        if model.image_input == "required":
            raise InvalidRequest("image", f"model {model.name} generates from an image: give the first frame (--image)")
        return None
    return read_first_frame(args.image, shape, settings.image_max_bytes, settings.image_max_pixels)


def _add_model_and_shape(parser: argparse.ArgumentParser, settings: Settings) -> None:
    _add_model(parser, settings)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--steps", type=int, dest="num_inference_steps")


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from core.caching.base import ScheduleFigures
    from core.caching.profiles import ProfileStore
    from core.generation import Progress, generate
    from core.models import load_model
    from core.video import encode_mp4, to_uint8

    request = GenerationRequest(**request_fields(args, GenerationRequest))
    started = time.perf_counter()
    model = load_model(args.model, settings)
    _with_adapters(model, args.model, settings)
    image = _first_frame(args, model, request.shape(model.family.rules, model.default_shape), settings)
    loaded = time.perf_counter()
    bar = tqdm(desc="denoising", unit="step", file=sys.stderr, delay=0.1)

    def on_plan(planned: ScheduleFigures | None) -> None:
        if planned is not None:
            bar.write(_format_schedule("planned", planned.branches, planned.ideal_speedup), file=sys.stderr)

    def on_step(progress: Progress) -> None:
        bar.total = progress.total
        bar.set_postfix(computed=progress.computed_calls, skipped=progress.skipped_calls, refresh=False)
        bar.update(progress.step - bar.n)
        if progress.step == progress.total:
            bar.close()

    try:
        result = generate(
            model, request, ProfileStore(settings.profiles_dir), on_plan=on_plan, on_step=on_step, image=image
        )
    finally:
        bar.close()
    encode_started = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    encode_mp4(to_uint8(result.frames), args.out, result.fps)
    finished = time.perf_counter()
    print(_format_report(result.cache))
    if result.fidelity is not None:
        f = result.fidelity
        print(
            f"fidelity vs uncached (same seed): PSNR {f.psnr:.2f} dB, SSIM {f.ssim:.4f}; "
            f"measured speedup {f.measured_speedup:.2f}x ({f.baseline_denoise_seconds:.2f} s uncached)"
        )
    print(_summary(args.out, result, loaded - started, finished - encode_started, finished - started))
    return 0


def _what_to_run(
    args: argparse.Namespace, settings: Settings
) -> tuple[tuple[str, ...], LoadedModel, Shape, Image.Image | None]:
    """What calibrate and frontier run: the prompts (the file's lines, else the defaults), the loaded model, the
    shape asked for (the model's default where a size is omitted) and the first frame, if given."""
    from core.models import load_model

    prompts = DEFAULT_CALIBRATION_PROMPTS
    if args.prompts is not None:
        prompts = tuple(line.strip() for line in args.prompts.read_text().splitlines() if line.strip())
    model = load_model(args.model, settings)
    _with_adapters(model, args.model, settings)
    shape = GenerationRequest(
        prompt=prompts[0] if prompts else "-",
        width=args.width,
        height=args.height,
        num_frames=args.num_frames,
        num_inference_steps=args.num_inference_steps,
    ).shape(model.family.rules, model.default_shape)
    return prompts, model, shape, _first_frame(args, model, shape, settings)


def _with_adapters(model: LoadedModel, source: str, settings: Settings) -> None:
    """Let the model run the LoRA adapters registered for it in the service's database (SKIPSTEP_DATABASE_URL),
    their files from its storage or SKIPSTEP_LORA_DIR, as its workers do."""
    from core.contract.models import same_model
    from core.lora_files import LoraFiles
    from core.models.lora import Adapters
    from core.settings import model_name
    from core.storage import storage_from

    configured = (name for name, configured in settings.model_sources.items() if same_model(configured, source))
    name = next(configured, model_name(source))
    files = LoraFiles(settings, storage_from(settings), name)
    model.adapters = Adapters(model.pipeline, max(settings.lora_cache_size, settings.request_max_loras), files)


def _calibrate(args: argparse.Namespace, settings: Settings) -> int:
    from core.caching.profiles import ProfileStore
    from core.calibration import calibrate, default_profile_name
    from core.contract.loras import LoraSpec

    prompts, model, shape, image = _what_to_run(args, settings)
    loras = [LoraSpec.model_validate(lora) for lora in parse_loras(args.lora)]
    store = ProfileStore(settings.profiles_dir)
    name = args.name or default_profile_name(model.name, shape, loras)
    store.check_writable(name)
    profile = calibrate(
        model,
        shape,
        prompts,
        name=name,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        on_prompt=lambda index, prompt: print(f"[{index + 1}/{len(prompts)}] {prompt}", file=sys.stderr),
        loras=loras,
        image=image,
    )
    path = store.save(profile)
    for branch, ratios in profile.magcache.items():
        print(f"magcache ratios ({branch}): " + " ".join(f"{r:.4f}" for r in ratios))
    for compared, coefficients in (profile.teacache or {}).items():
        print(f"teacache polynomial ({compared}): " + ", ".join(f"{c:.6g}" for c in coefficients))
    print(f"wrote profile {profile.name} to {path}")
    return 0


def _frontier(args: argparse.Namespace, settings: Settings) -> int:
    from core.caching.profiles import ProfileStore
    from core.contract.frontier import Frontier, mark_pareto
    from core.contract.loras import LoraSpec, adapter_key
    from core.contract.models import model_key
    from core.db import session_scope, utcnow
    from core.db.migrate import upgrade
    from core.frontier import DEFAULT_GRID, measure
    from core.jobs import frontier

    grid = [parse_setting(item) for item in args.setting] if args.setting else list(DEFAULT_GRID)
    loras = [LoraSpec.model_validate(lora) for lora in parse_loras(args.lora)]
    prompts, model, shape, image = _what_to_run(args, settings)
    upgrade(settings.database)
    runs = len(prompts) * (len(grid) + 1)
    done = iter(range(1, runs + 1))

    def on_run(prompt: str, setting: str, result: Any) -> None:
        print(f"[{next(done)}/{runs}] {setting}: {result.timings.denoising:.2f} s  ({prompt})", file=sys.stderr)

    points = mark_pareto(
        measure(
            model,
            shape,
            prompts,
            grid,
            ProfileStore(settings.profiles_dir),
            args.guidance_scale,
            args.seed,
            on_run,
            loras=loras,
            image=image,
        )
    )
    key, adapters = model_key(model.name), adapter_key(loras)
    with session_scope(settings.database) as session:
        frontier.save(session, key, shape, args.guidance_scale, points, adapters)
    measured = Frontier(
        model=key,
        **vars(shape),
        guidance_scale=args.guidance_scale,
        adapters=adapters,
        measured_at=utcnow(),
        points=points,
    )
    if args.json is not None:
        args.json.write_text(measured.model_dump_json(indent=1))
    print(format_frontier(measured))
    size = f"{shape.width}x{shape.height}x{shape.num_frames}"
    with_loras = f" with LoRAs {adapters}" if adapters else ""
    print(f"stored the frontier of {key} at {size}, {shape.num_inference_steps} steps{with_loras}")
    return 0


def parse_setting(item: str) -> tuple[str, dict[str, Any]]:
    """``STRATEGY[:NAME=VALUE,...]`` as --setting gives it."""
    from core.contract.strategies import parse_param

    strategy, _, rest = item.partition(":")
    return strategy.strip(), dict(parse_param(part) for part in rest.split(",") if part.strip())


def format_frontier(measured: Any) -> str:
    """The frontier as a text table, fastest first; * marks the Pareto front."""
    lines = [f"  {'setting':<58} {'calls':>9} {'speedup':>6}  PSNR min/mean   SSIM min/mean"]
    for p in sorted(measured.points, key=lambda p: -p.speedup):
        lines.append(
            f"{'*' if p.pareto else ' '} {p.setting:<58} {p.computed_calls:5.1f}/{p.total_calls:<3d} {p.speedup:5.2f}x "
            f"{p.psnr:6.2f}/{p.psnr_mean:6.2f}  {p.ssim:6.4f}/{p.ssim_mean:6.4f}"
        )
    return "\n".join(lines)


def _profiles(args: argparse.Namespace, settings: Settings) -> int:
    from core.caching.profiles import ProfileStore

    for profile in ProfileStore(settings.profiles_dir).all():
        data = [name for name in ("magcache", "teacache", "taocache") if getattr(profile, name) is not None]
        print(
            f"{profile.name}: {profile.model} {profile.width}x{profile.height}x{profile.num_frames}, "
            f"{profile.num_inference_steps} steps [{', '.join(data)}]"
        )
    return 0


def _format_schedule(title: str, branches: dict, ideal_speedup: float) -> str:
    lines = [f"{title} schedule (C computed, . reused), ideal speedup {ideal_speedup:.2f}x"]
    width = max(map(len, branches))
    for name, figures in branches.items():
        # A composite's figures name the rule behind each skip (see its strategy's docstring).
        steps = getattr(figures, "rules", figures.schedule)
        lines.append(f"  {name:<{width}} {steps}  {figures.computed}/{figures.computed + figures.skipped}")
    return "\n".join(lines)


def _format_report(report: CacheReport) -> str:
    header = f"cache {report.strategy} {report.params}" + (f" profile {report.profile}" if report.profile else "")
    return "\n".join(
        [
            header,
            _format_schedule("actual", report.branches, report.ideal_speedup),
            (
                f"denoise {report.denoise_seconds:.2f} s, {report.seconds_per_computed_call * 1000:.1f} ms per "
                f"computed call, {report.seconds_per_computed_step:.3f} s per computed step; estimated "
                f"full-compute {report.estimated_full_seconds:.2f} s, speedup {report.speedup:.2f}x"
            ),
        ]
    )


def _summary(out: Path, result: GenerationResult, load: float, encode: float, total: float) -> str:
    t, s = result.timings, result.shape
    return (
        f"wrote {out}: {s.num_frames} frames {s.width}x{s.height} at {result.fps} fps, {s.num_inference_steps} steps "
        f"in {total:.1f} s (load {load:.1f} s, text {t.text_encoding:.2f} s, denoise {t.denoising:.2f} s, "
        f"decode {t.vae_decode:.2f} s, encode {encode:.2f} s)"
    )
