"""Every strategy against an uncached run, side by side in one process, on one model and request.

    python bench/cache_speedup.py [--model wan-tiny] [--width W --height H --num-frames F --steps N]
                                  [--repeats R] [--config NAME[:k=v,...]] ...

Each repeat runs the uncached baseline and then every configuration (medians over R repeats).
For each configuration it prints computed calls, the ideal speedup (calls), the engine's
estimated speedup, the measured speedup (baseline denoise time / cached denoise time), measured
over ideal (m/i) and PSNR/SSIM against the baseline frames of the same seed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from core.caching.profiles import ProfileStore
from core.contract.request import GenerationRequest
from core.fidelity import psnr, ssim
from core.generation import GenerationResult, generate
from core.models import load_model
from core.settings import get_settings

DEFAULT_CONFIGS = (
    "teacache",
    "teacache:threshold=0.4",
    "magcache:threshold=0.12,max_skip_steps=2",
    "magcache:threshold=0.12,max_skip_steps=4",
    "magcache:threshold=0.24,max_skip_steps=6",
    "easycache",
    "easycache:threshold=0.4",
)


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    strategy, _, params = text.partition(":")
    pairs = (item.split("=", 1) for item in params.split(",") if item)
    return strategy, {name: value for name, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=get_settings().model)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--prompt", default="a red fox running through snow, cinematic")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--config", action="append", help="NAME[:k=v,...]; repeatable (default: a standard set)")
    args = parser.parse_args()

    settings = get_settings()
    model = load_model(args.model, settings)
    profiles = ProfileStore(settings.profiles_dir)

    def request(strategy: str = "none", params: dict | None = None) -> GenerationRequest:
        return GenerationRequest(
            prompt=args.prompt,
            width=args.width,
            height=args.height,
            num_frames=args.num_frames,
            num_inference_steps=args.steps,
            cache={"strategy": strategy, "params": params or {}},
        )

    warmup = request().model_copy(update={"num_inference_steps": 2})
    generate(model, warmup, profiles)
    shape = request().shape(model.family.rules, model.default_shape)
    print(
        f"# {model.name} on {model.device} ({torch.get_num_threads()} threads), {shape.width}x{shape.height}, "
        f"{shape.num_frames} frames, {shape.num_inference_steps} steps, {args.repeats} repeat(s), "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{'config':<44} {'calls':>7} {'ideal':>6} {'est.':>6} {'meas.':>6} {'m/i':>5} {'base s':>7} {'cached s':>8} "
        f"{'PSNR':>6} {'SSIM':>6}"
    )
    configs = [(text, *parse_config(text)) for text in args.config or DEFAULT_CONFIGS]
    base_times: list[float] = []
    cached_times: dict[str, list[float]] = {text: [] for text, _, _ in configs}
    last: dict[str, GenerationResult] = {}
    # Each repeat runs the baseline, then every configuration, so drift hits them alike.
    for _ in range(args.repeats):
        baseline = generate(model, request(), profiles)
        base_times.append(baseline.timings.denoising)
        for text, strategy, params in configs:
            last[text] = generate(model, request(strategy, params), profiles)
            cached_times[text].append(last[text].timings.denoising)
    base = statistics.median(base_times)
    for text, _, _ in configs:
        cached, report = last[text], last[text].cache
        computed = sum(b.computed for b in report.branches.values())
        total = computed + sum(b.skipped for b in report.branches.values())
        fast = statistics.median(cached_times[text])
        print(
            f"{text:<44} {computed:>3}/{total:<3} {report.ideal_speedup:>5.2f}x {report.speedup:>5.2f}x "
            f"{base / fast:>5.2f}x {base / fast / report.ideal_speedup:>5.2f} {base:>7.2f} {fast:>8.2f} "
            f"{psnr(cached.frames, baseline.frames):>6.2f} "
            f"{ssim(cached.frames, baseline.frames):>6.3f}"
        )


if __name__ == "__main__":
    main()
