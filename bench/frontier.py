"""The speed/fidelity frontier of one model at one shape, and how `auto` chooses on prompts it has not seen.

    python bench/frontier.py [--model wan-tiny-trained] [--width 64 --height 64 --num-frames 9 --steps 20]
                             [--prompts 4 --held-out 6] [--setting STRATEGY:NAME=VALUE,...]
                             [--out bench/results/frontier-cpu.md]
    python bench/frontier.py --from-json bench/results/frontier-cpu.json   # the report again, no runs

Calibrates the model at the shape on the calibration prompts (a profile of the bench's own, for the strategies
that need one), then measures every strategy at 3 settings (core.frontier.DEFAULT_GRID, what `skipstep frontier`
stores) on those prompts: the frontier. Then the same grid on held-out prompts with other seeds. For each target
tier, `auto`'s choice (made from the calibration frontier, as the service makes it at submit) is compared on the
held-out prompts with the best fixed setting that meets the same target there: its speedup relative to that
setting's (goal: within 5 %) and its worst held-out PSNR and SSIM against the target (goal: never below).
Writes the measurements as JSON, a markdown report with both tables, and the frontier as SVG (the dashboard's
chart, a legend added) beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from api.routes.admin import strategy_color, templates
from core.contract.frontier import (
    IDENTICAL_PSNR,
    TIERS,
    Frontier,
    FrontierPoint,
    Minimum,
    Target,
    choose,
    mark_pareto,
    setting_key,
)
from core.contract.models import PRESETS

# In the trained tiny model's caption vocabulary (training/clips.py); no held-out prompt is a calibration prompt.
CALIBRATION = (
    "a red square moving right on a black background",
    "a blue circle at the top on a gray background",
    "a yellow triangle moving down on a striped background",
    "a white triangle in the center and a yellow square moving up on a checkered background",
    "a green square on the right on a striped background",
    "a red circle moving left and a white square at the bottom on a gray background",
    "a blue square moving down on a checkered background",
    "a yellow circle at the top and a green triangle on the left on a black background",
    "a white circle moving right on a striped background",
    "a green triangle in the center on a checkered background",
    "a blue circle moving up and a red square on the right on a striped background",
    "a yellow square at the bottom on a gray background",
)
HELD_OUT = (
    "a green circle moving left on a checkered background",
    "a white square at the bottom on a black background",
    "a red triangle on the left and a blue square moving up on a gray background",
    "a yellow circle on the right on a striped background",
    "a blue triangle moving right and a green square at the top on a black background",
    "a red circle in the center on a gray background",
)
CALIBRATION_SEED, HELD_OUT_SEED = 0, 100
# Uncached frames whose 8-bit standard deviation is below this are nearly flat (PSNR then says little).
FLAT_FRAMES_STD = 10.0


class Measured(BaseModel):
    """What one bench run measured: enough to write the report again without running anything."""

    command: str
    minutes: float
    profile: str
    calibration_prompts: list[str]
    held_out_prompts: list[str]
    clock: str
    # Which weights: the preset's folder, the last commit that touched it, each component's sha256 (first 12).
    weights: str
    # PRESETS marks the model as random or not trained enough to decode what a caption says.
    untrained: bool
    # The uncached frames' spread, 8-bit standard deviation (mean over the prompts): near-flat frames make every
    # difference small and PSNR high.
    frame_std: float
    # The machine's 1-minute load average, least and most, sampled after every run.
    load: tuple[float, float]
    frontier: Frontier
    held_out: list[FrontierPoint]
    # Wall-clock speedups (fastest uncached over fastest run) by setting, whatever clock the points use.
    wall_speedups: dict[str, float]
    held_out_wall_speedups: dict[str, float]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wan-tiny-trained")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--num-frames", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=4, help=f"calibration prompts (at most {len(CALIBRATION)})")
    parser.add_argument("--held-out", type=int, default=6, help=f"held-out prompts (at most {len(HELD_OUT)})")
    parser.add_argument(
        "--setting", action="append", metavar="STRATEGY[:NAME=VALUE,...]", help="instead of the default grid"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine two threads wait on each other, 10-20x slower)",
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="what speedups divide: the process's CPU seconds while denoising (default: with one thread, the work "
        "itself, which other sessions' load hardly changes) or wall seconds (reported beside either way)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/frontier-cpu.md"))
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="write the report from an earlier run's JSON")
    args = parser.parse_args()

    if args.from_json is not None:
        measured = Measured.model_validate_json(args.from_json.read_text())
    else:
        measured = run(args)
        args.out.with_suffix(".json").write_text(measured.model_dump_json(indent=1) + "\n")
    svg = args.out.with_suffix(".svg")
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text(render_svg(measured.frontier))
    args.out.write_text(report(measured, svg))
    print(args.out.read_text())


def run(args: argparse.Namespace) -> Measured:
    import torch

    from core.caching.profiles import ProfileStore
    from core.calibration import calibrate
    from core.cli.generate import parse_setting
    from core.contract.request import GenerationRequest
    from core.db import utcnow
    from core.frontier import DEFAULT_GRID, measure
    from core.models import load_model
    from core.settings import get_settings
    from core.video import to_uint8

    torch.set_num_threads(args.threads)
    model = load_model(args.model, get_settings())
    shape = GenerationRequest(
        prompt="-", width=args.width, height=args.height, num_frames=args.num_frames, num_inference_steps=args.steps
    ).shape(model.family.rules, model.default_shape)
    grid = [parse_setting(item) for item in args.setting] if args.setting else list(DEFAULT_GRID)
    calibration_prompts, held_out_prompts = list(CALIBRATION[: args.prompts]), list(HELD_OUT[: args.held_out])
    started = time.perf_counter()
    walls: dict[str, dict[str, list[float]]] = {prompt: {} for prompt in calibration_prompts + held_out_prompts}

    loads: list[float] = []
    spreads: list[float] = []

    def progress(prompt: str, setting: str, result: Any) -> None:
        walls[prompt].setdefault(setting, []).append(result.timings.denoising)
        loads.append(os.getloadavg()[0])
        if setting == "none":
            spreads.append(float(to_uint8(result.frames).std()))
        timings = result.timings
        print(
            f"{time.perf_counter() - started:7.1f} s  wall {timings.denoising:6.2f} s  "
            f"cpu {timings.denoising_cpu:6.2f} s  {setting}  ({prompt})",
            flush=True,
        )

    def wall_speedups(prompts: list[str]) -> dict[str, float]:
        fastest: dict[str, float] = {}
        for prompt in prompts:
            for setting, seconds in walls[prompt].items():
                fastest[setting] = min(fastest.get(setting, min(seconds)), min(seconds))
        return {setting: round(fastest["none"] / seconds, 4) for setting, seconds in fastest.items()}

    # A profile of the bench's own, from these weights at this shape: one in the shared profiles folder may have
    # been calibrated on other weights of the same architecture.
    profiles = ProfileStore(Path(tempfile.mkdtemp(prefix="frontier-profiles-")))
    profile = calibrate(model, shape, calibration_prompts, guidance_scale=5.0, seed=CALIBRATION_SEED)
    profiles.save(profile)
    print(f"{time.perf_counter() - started:7.1f} s  calibrated {profile.name}", flush=True)
    calibration = mark_pareto(
        measure(
            model, shape, calibration_prompts, grid, profiles, seed=CALIBRATION_SEED, on_run=progress, clock=args.clock
        )
    )
    held_out = measure(
        model, shape, held_out_prompts, grid, profiles, seed=HELD_OUT_SEED, on_run=progress, clock=args.clock
    )
    command = (
        f"python bench/frontier.py --model {args.model} --width {shape.width} --height {shape.height} "
        f"--num-frames {shape.num_frames} --steps {shape.num_inference_steps} --prompts {args.prompts} "
        f"--held-out {args.held_out} --threads {args.threads} --clock {args.clock} "
        + "".join(f"--setting {item} " for item in args.setting or ())
        + f"--out {args.out}"
    )
    return Measured(
        command=command,
        minutes=round((time.perf_counter() - started) / 60, 1),
        profile=profile.name,
        clock=args.clock,
        weights=describe_weights(args.model),
        untrained=PRESETS[args.model].untrained if args.model in PRESETS else False,
        frame_std=round(sum(spreads) / len(spreads), 2),
        load=(min(loads), max(loads)),
        calibration_prompts=calibration_prompts,
        held_out_prompts=held_out_prompts,
        frontier=Frontier(
            model=args.model, **vars(shape), guidance_scale=5.0, measured_at=utcnow(), points=calibration
        ),
        held_out=held_out,
        wall_speedups=wall_speedups(calibration_prompts),
        held_out_wall_speedups=wall_speedups(held_out_prompts),
    )


def describe_weights(model: str) -> str:
    from core.models.presets import TRAINED

    folder = TRAINED.get(model)
    if folder is None:
        return f"`{model}` as `load_model` finds it"
    root = Path(__file__).resolve().parent.parent
    where = folder.resolve().relative_to(root)
    commit = subprocess.run(
        ["git", "log", "-1", "--format=%h %cs", "--", str(where)], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    digests = ", ".join(
        f"{file.parent.name} {hashlib.sha256(file.read_bytes()).hexdigest()[:12]}"
        for file in sorted(folder.glob("*/*.safetensors"))
    )
    return f"`{where}` as of commit {commit or '(uncommitted)'} (sha256: {digests})"


def render_svg(frontier: Frontier) -> str:
    """The dashboard's chart, standalone: its namespace, its stylesheet's few rules and, below it, a legend."""
    macro = templates.env.get_template("admin/_charts.html").module.frontier_chart
    css = "<style>.grid{stroke:#ddd}.axis{font:11px sans-serif;fill:#555}.one{stroke:#999;stroke-dasharray:2 2}</style>"
    strategies = sorted({p.strategy for p in frontier.points})
    legend = "".join(
        f'<circle cx="{52 + 72 * i}" cy="294" r="4" fill="{strategy_color(name)}"/>'
        f'<text class="axis" x="{59 + 72 * i}" y="298">{name}</text>'
        for i, name in enumerate(strategies)
    )
    legend += '<text class="axis" x="52" y="316">larger marks, dashed: the Pareto front; dotted: 1x (no cache)</text>'
    chart = str(macro(frontier)).replace('role="img"', 'xmlns="http://www.w3.org/2000/svg" role="img"', 1)
    chart = chart.replace('viewBox="0 0 640 280"', 'viewBox="0 0 640 324"', 1)
    return chart.replace(">", ">" + css, 1).replace("</svg>", legend + "</svg>")


def suggest_tiers(frontier: Frontier) -> tuple[dict[str, Minimum], dict[str, FrontierPoint], float, float]:
    """The tiers' thresholds this frontier gives, each tier's anchor, and the PSNR and SSIM margins (TIER_RULE)."""
    measured = [p for p in frontier.points if p.psnr < IDENTICAL_PSNR]
    front = sorted((p for p in measured if p.pareto and p.faster()), key=lambda p: p.speedup)
    if not front:
        return {}, {}, 0.0, 0.0
    psnr_margin = max(MIN_MARGIN_DB, math.ceil(max(p.psnr_mean - p.psnr for p in measured) * 2) / 2)
    ssim_margin = math.ceil(max(p.ssim_mean - p.ssim for p in measured) * 100) / 100

    def threshold(anchor: FrontierPoint) -> float:
        """``psnr_margin`` below the anchor, rounded down to 0.1 dB (0.01 where that would admit a faster one)."""
        faster = [p.psnr for p in front if p.speedup > anchor.speedup]
        for digits in (1, 2):
            value = max(0.0, math.floor((anchor.psnr - psnr_margin) * 10**digits) / 10**digits)
            if not faster or value > max(faster):
                return value
        return value

    # Anchors a threshold can single out with the whole margin: no faster setting within the margin below them.
    anchors = [a for a in front if all(p.psnr < a.psnr - psnr_margin for p in front if p.speedup > a.speedup)]
    fast = anchors[-1]
    high = max((a for a in anchors if a.speedup >= HIGH_MIN_SPEEDUP), key=lambda a: a.psnr, default=fast)
    middle = math.sqrt(high.speedup * fast.speedup)
    between = [a for a in anchors if high.speedup < a.speedup < fast.speedup] or [high]
    balanced = min(between, key=lambda a: abs(math.log(a.speedup / middle)))
    chosen = {"high": high, "balanced": balanced, "fast": fast}
    tiers = {}
    for tier, anchor in chosen.items():
        psnr = threshold(anchor)
        admitted = min(p.ssim for p in frontier.points if p.psnr >= psnr)
        tiers[tier] = Minimum(psnr=psnr, ssim=max(0.0, math.floor((admitted - ssim_margin) * 100) / 100))
    return tiers, chosen, psnr_margin, ssim_margin


# The rule that sets the tiers from a frontier (README: `auto`; docs/architecture.md).
HIGH_MIN_SPEEDUP = 1.25
MIN_MARGIN_DB = 1.0
TIER_RULE = (
    "The margin is the widest spread between a setting's mean and worst-case PSNR over the calibration prompts "
    f"(how much a prompt can lose against the others), rounded up to 0.5 dB, at least {MIN_MARGIN_DB:g} dB; the "
    "SSIM margin likewise, rounded up to 0.01. On the calibration frontier's Pareto front (settings faster than no "
    "cache, not bit-exact) an anchor is a setting with no faster one within the margin below it. `fast` anchors "
    f"the fastest; `high` the most faithful anchor at least {HIGH_MIN_SPEEDUP:g}x; `balanced` the anchor between "
    "them nearest the geometric mean of their speedups. A tier's PSNR threshold is its anchor's worst-case PSNR "
    "less the margin, rounded down to 0.1 dB (so `auto` takes the anchor, with the margin to spare on prompts it "
    "has not seen); its SSIM threshold is the lowest worst-case SSIM among the settings that meet that PSNR, less "
    "the SSIM margin, rounded down to 0.01 (it vetoes nothing the frontier admits; it guards against receipts that "
    "show structural damage)."
)


def _wants(minimum: Minimum | None) -> str:
    if minimum is None:
        return "bit-exact"
    return ", ".join(
        f"{name} >= {value:g}" for name, value in (("PSNR", minimum.psnr), ("SSIM", minimum.ssim)) if value is not None
    )


def report(measured: Measured, svg: Path) -> str:
    frontier = measured.frontier
    clock = "CPU" if measured.clock == "cpu" else "wall"
    lines = [
        f"# {frontier.model} on CPU (2 cores, shared), {frontier.width}x{frontier.height}, {frontier.num_frames} "
        f"frames, {frontier.num_inference_steps} steps: the speed/fidelity frontier and `auto`",
        "",
        "```bash",
        measured.command,
        "```",
        "",
        f"{measured.minutes:g} min on the 2-core machine (1-minute load average {measured.load[0]:.0f} to "
        f"{measured.load[1]:.0f} while it ran).",
        "",
        f"Weights: {measured.weights}.",
        "",
        *(
            [
                f"**These weights are undertrained** (`core/contract/models.py` marks `{frontier.model}` as not "
                "trained enough to decode what a caption says). Timings, calls and schedules are real; the fidelity "
                "figures hold for these weights, not for trained models. "
                + (
                    f"The uncached frames are nearly flat (8-bit standard deviation {measured.frame_std:g} on "
                    "average), so a cache's errors move few pixel levels and PSNR reads far higher than it would on "
                    "a model that draws its captions."
                    if measured.frame_std < FLAT_FRAMES_STD
                    else f"Uncached frames' 8-bit standard deviation: {measured.frame_std:g} on average."
                ),
                "",
            ]
            if measured.untrained
            else [f"Uncached frames' 8-bit standard deviation: {measured.frame_std:g} on average.", ""]
        ),
        f"Calibration prompts (seeds from {CALIBRATION_SEED}; they give the calibration profile `{measured.profile}` "
        f"and the frontier): {'; '.join(measured.calibration_prompts)}.  ",
        f"Held-out prompts (seeds from {HELD_OUT_SEED}): {'; '.join(measured.held_out_prompts)}.",
        "",
        "Fidelity: PSNR and SSIM of the decoded 8-bit frames against the uncached run of the same prompt and seed; "
        "worst and mean over the prompts (100 dB: identical). LPIPS is not measured: its network weights are not "
        f"available offline on this machine. Speedup: the fastest uncached run's denoising time over the setting's "
        f"fastest, in {clock} seconds"
        + (
            " (the process's CPU time while denoising, one torch thread: other sessions' load changes wall time by "
            "2-20x here and CPU time hardly; wall-clock speedups, measured on the same runs, beside it)"
            if measured.clock == "cpu"
            else ""
        )
        + "; calls: transformer calls computed per run (mean) of an uncached run's. PSNR and SSIM: worst over the "
        "prompts (what `auto` predicts), then the mean. Pareto: on the front of worst-case PSNR against speedup.",
        "",
        "## The frontier (calibration prompts)",
        "",
        f"| row | Pareto | calls | speedup ({clock}) | wall speedup | PSNR | PSNR mean | SSIM | SSIM mean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(frontier.points, key=lambda p: -p.speedup):
        lines.append(
            f"| `{p.setting}` | {'yes' if p.pareto else ''} | {p.computed_calls:.3g}/{p.total_calls} "
            f"| {p.speedup:.2f}x | {measured.wall_speedups.get(p.setting, 0):.2f}x | {p.psnr:.2f} | {p.psnr_mean:.2f} "
            f"| {p.ssim:.4f} | {p.ssim_mean:.4f} |"
        )
    lines += ["", f"![speedup against worst-case PSNR, one mark per setting, the Pareto front dashed]({svg.name})", ""]

    suggested, anchors, psnr_margin, ssim_margin = suggest_tiers(frontier)
    lines += ["## Tiers from this frontier", "", TIER_RULE, ""]
    if suggested:
        lines += [f"Here the margins are {psnr_margin:g} dB and {ssim_margin:g}.", ""]
    if suggested:
        lines += [
            "| tier | anchor | its speedup, worst PSNR, SSIM | thresholds it gives "
            "| in force (core/contract/frontier.py) |",
            "|---|---|---|---|---|",
        ]
        for tier, minimum in suggested.items():
            anchor = anchors[tier]
            lines.append(
                f"| {tier} | `{anchor.setting}` | {anchor.speedup:.2f}x, {anchor.psnr:.2f} dB, {anchor.ssim:.4f} "
                f"| {_wants(minimum)} | {_wants(TIERS[tier])} |"
            )
    else:
        lines.append("No setting on the Pareto front is faster than no cache and not bit-exact: no tiers to set.")
    lines += [
        "",
        "## `auto` against the best fixed setting, held-out prompts",
        "",
        "`auto` chooses from the calibration frontier above, as the service does at submit; its choice and every "
        "fixed setting are then judged on the held-out runs: the best fixed setting is the fastest whose worst "
        "held-out fidelity meets the tier. Goals: auto within 5 % of the best fixed setting's speedup; auto's "
        "held-out fidelity never below the target.",
        "",
        "### With the tiers in force (`core/contract/frontier.py`)",
        "",
        *auto_table(measured, TIERS),
    ]
    if suggested and any(suggested[tier] != TIERS[tier] for tier in suggested):
        lines += ["", "### With the tiers this frontier gives (above)", "", *auto_table(measured, suggested)]
    return "\n".join(lines) + "\n"


def auto_table(measured: Measured, tiers: dict[str, Minimum | None]) -> list[str]:
    frontier, held_out = measured.frontier, measured.held_out
    clock = "CPU" if measured.clock == "cpu" else "wall"
    lines = [
        f"| tier (target) | auto's choice | held-out speedup ({clock}), wall, calls | best fixed on held-out "
        "| its speedup, wall, calls | auto / best: speedup, calls | auto's worst held-out PSNR, SSIM | meets target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_setting = {p.setting: p for p in held_out}
    wall = measured.held_out_wall_speedups
    within, safe = [], []
    total = frontier.points[0].total_calls if frontier.points else 0

    def figures(point: FrontierPoint | None) -> tuple[float, float, float]:
        if point is None:
            return 1.0, 1.0, float(total)
        return point.speedup, wall.get(point.setting, 0.0), point.computed_calls

    for tier, minimum in tiers.items():
        target = Target(tier=tier) if minimum is None else Target(min_psnr=minimum.psnr, min_ssim=minimum.ssim)
        choice = choose(frontier, target)
        chosen = by_setting.get(setting_key(choice.strategy, choice.params)) if choice.strategy != "none" else None
        meeting = [p for p in held_out if p.faster() and minimum is not None and p.meets(minimum)]
        best = max(meeting, key=lambda p: p.speedup, default=None)
        auto_speed, auto_wall, auto_calls = figures(chosen)
        best_speed, best_wall, best_calls = figures(best)
        fidelity = f"{chosen.psnr:.2f}, {chosen.ssim:.4f}" if chosen else "identical"
        meets = "yes" if chosen is None or minimum is None or chosen.meets(minimum) else "**no**"
        if minimum is not None:
            within.append(auto_speed >= 0.95 * best_speed)
            safe.append(meets == "yes")
        lines.append(
            f"| {tier} ({_wants(minimum)}) | `{setting_key(choice.strategy, choice.params)}` "
            f"| {auto_speed:.2f}x, {auto_wall:.2f}x, {auto_calls:.3g}/{total} "
            f"| {f'`{best.setting}`' if best else 'none (no cache)'} "
            f"| {best_speed:.2f}x, {best_wall:.2f}x, {best_calls:.3g}/{total} "
            f"| {auto_speed / best_speed:.1%}, {best_calls / auto_calls:.1%} | {fidelity} | {meets} |"
        )
    return [
        *lines,
        "",
        f"Goals: `auto` within 5 % of the best fixed setting's speedup in {sum(within)} of {len(within)} tiers; its "
        f"held-out fidelity at or above the target in {sum(safe)} of {len(safe)}.",
    ]


if __name__ == "__main__":
    main()
