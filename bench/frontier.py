"""The speed/fidelity frontier of one model at one shape, and how `auto` chooses on prompts it has not seen.

    python bench/frontier.py [--model wan-tiny-trained] [--width 64 --height 64 --num-frames 9 --steps 10]
                             [--out bench/results/frontier-cpu.md]

Measures every strategy at 3 settings (core.frontier.DEFAULT_GRID) on calibration prompts (the frontier,
as `skipstep frontier` stores it), then the same grid on held-out prompts with other seeds. For each target tier,
`auto`'s choice (made from the calibration frontier, as the service makes it at submit) is compared on the
held-out prompts with the best fixed setting that meets the same target there: its speedup relative to that
setting's (goal: within 5 %) and its worst held-out PSNR and SSIM against the target (goal: never below).
Writes a markdown file with both tables and the frontier as SVG (the dashboard's chart) beside it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from api.routes.admin import templates
from core.caching.profiles import ProfileStore
from core.contract.frontier import TIERS, Frontier, FrontierPoint, Target, choose, mark_pareto, setting_key
from core.contract.request import GenerationRequest
from core.db import utcnow
from core.frontier import DEFAULT_GRID, measure
from core.models import load_model
from core.settings import get_settings

CALIBRATION = (
    "a red circle moving left to right on a blue background",
    "a green square bouncing in the top half, striped texture",
    "a yellow triangle sliding down on a dark background",
)
HELD_OUT = (
    "a blue circle moving right to left on a white background",
    "a purple square drifting upwards, checkered texture",
    "an orange triangle moving across the bottom on a grey background",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan-tiny-trained")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--num-frames", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=3, help="calibration prompts (at most 3)")
    parser.add_argument("--held-out", type=int, default=3, help="held-out prompts (at most 3)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/frontier-cpu.md"))
    args = parser.parse_args()

    settings = get_settings()
    model = load_model(args.model, settings)
    shape = GenerationRequest(
        prompt="-", width=args.width, height=args.height, num_frames=args.num_frames, num_inference_steps=args.steps
    ).shape(model.family.rules, model.default_shape)
    profiles = ProfileStore(settings.profiles_dir)
    grid = list(DEFAULT_GRID)
    started = time.perf_counter()

    def progress(prompt: str, setting: str, result: object) -> None:
        print(f"{time.perf_counter() - started:7.1f} s  {setting}  ({prompt})", flush=True)

    calibration_prompts, held_out_prompts = CALIBRATION[: args.prompts], HELD_OUT[: args.held_out]
    calibration = mark_pareto(measure(model, shape, calibration_prompts, grid, profiles, seed=0, on_run=progress))
    held_out = measure(model, shape, held_out_prompts, grid, profiles, seed=100, on_run=progress)
    elapsed = time.perf_counter() - started
    frontier = Frontier(model=args.model, **vars(shape), guidance_scale=5.0, measured_at=utcnow(), points=calibration)
    svg = args.out.with_suffix(".svg")
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text(render_svg(frontier))
    args.out.write_text(report(args, frontier, held_out, elapsed, svg))
    print(args.out.read_text())


def render_svg(frontier: Frontier) -> str:
    macro = templates.env.get_template("admin/_charts.html").module.frontier_chart
    css = "<style>.grid{stroke:#ddd}.axis{font:11px sans-serif;fill:#555}.one{stroke:#999;stroke-dasharray:2 2}</style>"
    return (
        str(macro(frontier))
        .replace('role="img"', 'xmlns="http://www.w3.org/2000/svg" role="img"', 1)
        .replace(">", ">" + css, 1)
    )


def report(
    args: argparse.Namespace, frontier: Frontier, held_out: list[FrontierPoint], elapsed: float, svg: Path
) -> str:
    command = (
        f"python bench/frontier.py --model {args.model} --width {frontier.width} --height {frontier.height} "
        f"--num-frames {frontier.num_frames} --steps {frontier.num_inference_steps} --prompts {args.prompts} "
        f"--held-out {args.held_out} "
        f"--out {args.out}"
    )
    lines = [
        f"# Frontier, CPU: {args.model}, {frontier.width}x{frontier.height}, {frontier.num_frames} frames, "
        f"{frontier.num_inference_steps} steps",
        "",
        f"`{command}` ({elapsed / 60:.1f} min on the 2-core machine, other jobs running beside it)",
        "",
        f"Calibration prompts (seeds from 0): {'; '.join(CALIBRATION[: args.prompts])}.  ",
        f"Held-out prompts (seeds from 100): {'; '.join(HELD_OUT[: args.held_out])}.",
        "",
        "Fidelity: PSNR and SSIM of the decoded 8-bit frames against the uncached run of the same prompt and seed; "
        "worst and mean over the prompts (100 dB: identical). LPIPS is not measured: its network weights are not "
        "available offline on this machine. Speedup: the fastest uncached run over the setting's fastest run "
        "(other load only slows runs down). `*`: on the Pareto front (worst PSNR against speedup).",
        "",
        "## The frontier (calibration prompts)",
        "",
        "| | setting | calls | speedup | PSNR worst / mean | SSIM worst / mean |",
        "|---|---|---|---|---|---|",
    ]
    for p in sorted(frontier.points, key=lambda p: -p.speedup):
        lines.append(
            f"| {'*' if p.pareto else ''} | `{p.setting}` | {p.computed_calls:g}/{p.total_calls} | {p.speedup:.2f}x "
            f"| {p.psnr:.2f} / {p.psnr_mean:.2f} | {p.ssim:.4f} / {p.ssim_mean:.4f} |"
        )
    lines += [
        "",
        f"![speedup against worst-case PSNR]({svg.name})",
        "",
        "## `auto` against the best fixed setting, held-out prompts",
        "",
    ]
    lines += [
        "| tier (target) | auto's choice | auto held-out speedup | best fixed (held out) | its speedup | auto / best "
        "| auto held-out PSNR, SSIM worst | meets target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_setting = {p.setting: p for p in held_out}
    for tier, minimum in TIERS.items():
        target = Target(tier=tier)
        choice = choose(frontier, target)
        chosen = by_setting.get(setting_key(choice.strategy, choice.params)) if choice.point else None
        meeting = [p for p in held_out if p.speedup > 1 and (minimum is None or p.meets(minimum))]
        meeting = meeting if minimum is not None else []
        best = max(meeting, key=lambda p: p.speedup, default=None)
        want = "bit-exact" if minimum is None else f"PSNR >= {minimum.psnr:g}, SSIM >= {minimum.ssim:g}"
        auto_speed = chosen.speedup if chosen else 1.0
        best_speed = best.speedup if best else 1.0
        fidelity = f"{chosen.psnr:.2f}, {chosen.ssim:.4f}" if chosen else "identical"
        meets = "yes" if chosen is None or minimum is None or chosen.meets(minimum) else "**no**"
        lines.append(
            f"| {tier} ({want}) | `{setting_key(choice.strategy, choice.params)}` | {auto_speed:.2f}x "
            f"| {f'`{best.setting}`' if best else 'none'} | {best_speed:.2f}x | {auto_speed / best_speed:.1%} "
            f"| {fidelity} | {meets} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
