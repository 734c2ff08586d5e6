"""Write docs/choosing-a-strategy.md from the measured tables under bench/results/.

Every table of a results file whose first column is ``row`` and which has a speedup column is
copied (row, calls, speedups, PSNR, SSIM), under the heading that names its model, device and
shape (and its section), with a link to its source and the random-weights caveat where the model's weights are
random. Nothing on the page is typed by hand except the guide at its top, so re-running this
script after a bench keeps the page true; ``--check`` fails when the committed page is stale
(tests/test_docs.py runs it).

    python bench/strategy_page.py [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.contract.models import PRESETS  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "choosing-a-strategy.md"

# The heading every bench writes above its table: "# MODEL on DEVICE, ...".
TABLE_HEADING = re.compile(r"^#+ (?P<model>\S+) on (?P<rest>.+)$")
KEPT_COLUMNS = re.compile(r"^(row|calls.*|.*speedup.*|.*vs (none|plain)|PSNR|SSIM)$", re.IGNORECASE)

GUIDE = """\
# Choosing a strategy

What this repository has measured, per strategy and setting: how many transformer calls ran, the
speedup, and the fidelity of the frames against the uncached run of the same seed (PSNR in dB,
`inf` = identical; SSIM, 1.0 = identical). The tables below are generated from `bench/results/` by
`bench/strategy_page.py`; each links to the file it comes from, which has the command, the machine
and the full table.

## The short version

- **`none`** computes every step: the baseline, bit-exact with diffusers' own pipeline.
- **Schedule-ahead strategies** — `magcache`, `taylorseer`, `taocache`, and `teacache` where the
  calibration profile recorded the step count's embeddings — decide every skip before denoising
  from a calibration profile (or a fixed rule), so a job's `expected` shows the exact schedule and
  the ideal speedup at submit, and the measured speedup follows it closely (`measured/ideal`). Pick
  one of these when you need predictable latency. MagCache at its published setting (0.12, K=2) is
  the reference point of the published Wan2.1 benchmark.
- **Adaptive strategies** — `easycache`, `fbcache`, `dbcache` (and `teacache` without recorded
  embeddings) — measure a signal while denoising and skip while it stays under a threshold. What
  they skip depends on the model's weights and the prompt: their published thresholds are tuned
  for trained models, and on random weights most of them skip nothing at their defaults.
- **`chipmunk`** works inside the blocks (sparse deltas) rather than skipping steps; skipstep runs
  its reference path, which computes the same numbers with no speedup (see the README).
- Fidelity depends on the model you serve: measure it on yours with `compare: true` (or
  `skipstep generate --compare`), which runs the uncached baseline with the same seed and reports
  PSNR, SSIM and the measured speedup.

## Random weights

Tables marked *random weights* come from presets whose weights are random or not trained enough yet to
decode what a caption says ({random}). Their
timings, call counts and schedules are real and carry over to trained models of the same shape;
their PSNR and SSIM say little (the frames are noise), and adaptive strategies behave differently
on trained weights.

## Measured
"""


@dataclass(frozen=True)
class Table:
    source: Path
    heading: str
    model: str
    header: list[str]
    rows: list[list[str]]


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def tables(path: Path) -> list[Table]:
    """The tables of one results file that measure speedups, each under the last heading that named a model
    (and the section it sits in, where that is another heading)."""
    found: list[Table] = []
    lines = path.read_text().splitlines()
    model: re.Match[str] | None = None
    section = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
            model = TABLE_HEADING.match(line) or model
        elif line.startswith("| row |") and model is not None:
            header = cells(line)
            index += 2  # the header and its |---| line
            rows: list[list[str]] = []
            while index < len(lines) and lines[index].startswith("|"):
                rows.append(cells(lines[index]))
                index += 1
            if any("speedup" in name or " vs " in name for name in header):
                heading = f"{model['model']} on {model['rest']}"
                if section != heading.strip():
                    # The model heading's own run details (after ";") belong to another table.
                    heading = f"{section} ({heading.split(';')[0]})"
                found.append(Table(path, heading, model["model"], header, rows))
            continue
        index += 1
    return found


def untrained(model: str) -> bool:
    preset = PRESETS.get(model)
    return preset is not None and preset.untrained


def render(table: Table) -> str:
    kept = [i for i, name in enumerate(table.header) if KEPT_COLUMNS.match(name)]
    source = table.source.relative_to(ROOT).as_posix()
    lines = [f"### {table.heading}", ""]
    caveat = " — *random weights* (see [Random weights](#random-weights))" if untrained(table.model) else ""
    lines.append(f"From [`{source}`](../{source}){caveat}.")
    lines.append("")
    lines.append("| " + " | ".join(table.header[i] for i in kept) + " |")
    lines.append("|" + "---|" * len(kept))
    for row in table.rows:
        lines.append("| " + " | ".join(row[i] if i < len(row) else "" for i in kept) + " |")
    return "\n".join(lines) + "\n"


def page() -> str:
    random = ", ".join(f"`{name}`" for name, preset in PRESETS.items() if preset.untrained)
    sections = [GUIDE.replace("{random}", random)]
    for path in sorted(RESULTS.glob("*.md")):
        sections.extend(render(table) for table in tables(path))
    return "\n".join(sections)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed page differs from the results")
    args = parser.parse_args()
    text = page()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} is stale: run python bench/strategy_page.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
