"""One job across N GPUs against one GPU: per strategy, the denoise time on 1 and on N devices, the parallel
speedup (1-device over N-device seconds, same strategy), the speedup over the 1-device uncached run, and the
largest difference of the N-device frames from the 1-device ones.

    PYTHONUNBUFFERED=1 python bench/multigpu.py --gpus 4 --mode ulysses [--model wan2.1-1.3b-random]
        [--width 832 --height 480 --num-frames 81 --steps 50] [--config NAME[:k=v,...] ...] [--repeats N]
        [--out results/gpu-H100x4.md]

The 1-device run is a process of its own on GPU 0; then one process per GPU joins a group on loopback
(core.parallel: NCCL) with ``--mode`` (ulysses, ring or cfg; cfg takes exactly 2 GPUs), as a multi-GPU
worker runs. Each process loads the model, runs one warm-up generation, then every config ``--repeats``
times (the medians are printed). ``--cpu`` runs the same on CPU processes (gloo), a smoke run that checks the
script, not a speed figure. Ring attention needs a backend that returns the log-sum-exp: set
``SKIPSTEP_ATTENTION_BACKEND`` (e.g. ``flash`` or ``_native_cudnn``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from cache_speedup import parse_config

from core import parallel
from core.caching.profiles import ProfileStore
from core.contract.request import GenerationRequest
from core.generation import generate
from core.models import load_model
from core.settings import get_settings

DEFAULT_CONFIGS = [
    "none",
    "teacache:threshold=0.4",
    "magcache",
    "easycache:threshold=0.4",
    "fbcache:threshold=0.2",
    "dbcache:residual_diff_threshold=0.2",
    "taylorseer",
    "taocache:early=magcache",
]


def _rank(args: argparse.Namespace) -> None:
    """One process: load, join the group (world size > 1), run every config; rank 0 writes the figures."""
    device = "cpu" if args.cpu else f"cuda:{args.rank}"
    settings = get_settings().model_copy(update={"device": device, "prompt_cache_size": 0})
    model = load_model(args.model, settings)
    if args.world_size > 1:
        parallel.init_group(args.rank, args.world_size, args.port, torch.device(device))
        model.parallel = parallel.enable(model.transformer, args.mode)
    profiles = ProfileStore(settings.profiles_dir)
    shape = {
        "width": args.width,
        "height": args.height,
        "num_frames": args.num_frames,
        "num_inference_steps": args.steps,
    }
    shape = {key: value for key, value in shape.items() if value is not None}

    def request(config: str) -> GenerationRequest:
        strategy, params = parse_config(config)
        return GenerationRequest(prompt=args.prompt, seed=0, cache={"strategy": strategy, "params": params}, **shape)

    generate(model, request("none"), profiles)
    figures: dict[str, dict] = {}
    for _ in range(args.repeats):
        for config in args.config:
            result = generate(model, request(config), profiles)
            computed = sum(branch.computed for branch in result.cache.branches.values())
            total = sum(branch.computed + branch.skipped for branch in result.cache.branches.values())
            row = figures.setdefault(config, {"calls": f"{computed}/{total}", "seconds": []})
            row["seconds"].append(result.timings.denoising)
            if args.rank == 0:
                np.save(Path(args.out_dir) / f"{args.world_size}-{args.config.index(config) + 1}.npy", result.frames)
            print(f"{args.world_size} device(s) {config}: {result.timings.denoising:.2f} s", flush=True)
    if args.rank == 0:
        (Path(args.out_dir) / f"{args.world_size}.json").write_text(json.dumps(figures))
    parallel.close_group()


def _launch(args: argparse.Namespace, world_size: int, out_dir: str) -> None:
    port = parallel.free_port()
    common = [sys.executable, __file__, *sys.argv[1:], "--world-size", str(world_size), "--port", str(port)]
    common += ["--out-dir", out_dir]
    processes = [subprocess.Popen([*common, "--rank", str(rank)]) for rank in range(world_size)]
    codes = [process.wait() for process in processes]
    if any(codes):
        sys.exit(f"{world_size}-device run failed: exit codes {codes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=get_settings().model)
    parser.add_argument("--gpus", type=int, required=True, help="N: devices of the multi-device run")
    parser.add_argument("--mode", choices=parallel.MODES, default="ulysses")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--prompt", default="a red fox running through snow, cinematic")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--config", action="append", help="NAME[:k=v,...]; repeatable (default: every strategy)")
    parser.add_argument("--cpu", action="store_true", help="CPU processes over gloo: a smoke run")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    # Set by _launch for the rank processes.
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--world-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.config = args.config or DEFAULT_CONFIGS
    if args.rank is not None:
        _rank(args)
        return
    with tempfile.TemporaryDirectory() as out_dir:
        _launch(args, 1, out_dir)
        _launch(args, args.gpus, out_dir)
        single, multi = (json.loads((Path(out_dir) / f"{n}.json").read_text()) for n in (1, args.gpus))
        baseline = statistics.median(single["none"]["seconds"]) if "none" in single else None
        lines = [
            f"{args.model}, {args.mode} over {args.gpus} {'CPU processes' if args.cpu else 'GPUs'}, "
            f"{args.repeats} repeat(s), medians",
            "",
            f"{'config':<40} {'calls':>7} {'1 dev s':>8} {f'{args.gpus} dev s':>8} {'parallel':>8} "
            f"{'vs none':>8} {'max diff':>9}",
        ]
        for index, config in enumerate(args.config, start=1):
            one, many = statistics.median(single[config]["seconds"]), statistics.median(multi[config]["seconds"])
            difference = np.abs(
                np.load(Path(out_dir) / f"1-{index}.npy") - np.load(Path(out_dir) / f"{args.gpus}-{index}.npy")
            ).max()
            versus = f"{baseline / many:7.2f}x" if baseline else "       -"
            lines.append(
                f"{config:<40} {multi[config]['calls']:>7} {one:8.2f} {many:8.2f} {one / many:7.2f}x {versus} "
                f"{difference:9.2e}"
            )
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.write_text(f"```\n{table}\n```\n")


if __name__ == "__main__":
    main()
