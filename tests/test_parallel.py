"""One job across two CPU processes (gloo): Ulysses context parallelism and CFG-parallel give the frames and
the skip decisions of the single-process run, for `none` and every strategy.

Both ranks run tests/parallel_ranks.py once (one group, both modes); the reference runs here. Ulysses moves
tokens and heads between ranks (all-to-all, all-gather) without summing anything, and CFG-parallel computes
each branch whole on one rank, so no reduction order enters the frames: measured, they are bit-identical.
TOLERANCE leaves room for a GEMM that blocks a half-length sequence differently on other CPUs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.caching.profiles import ProfileStore
from core.contract.request import GenerationRequest
from core.generation import generate
from core.models import LoadedModel
from core.parallel import free_port

RANKS = Path(__file__).with_name("parallel_ranks.py")
TOLERANCE = 1e-5
BASE = {
    "prompt": "a red fox running through snow",
    "width": 64,
    "height": 64,
    "num_frames": 9,
    "num_inference_steps": 6,
    "seed": 7,
}
# Thresholds near the adaptive strategies' signals on wan-tiny: a ratio taken over one rank's shard of the
# tokens instead of all of them would flip some of these decisions.
CACHES = {
    "none": {"strategy": "none"},
    "teacache": {"strategy": "teacache", "params": {"threshold": 0.4}},
    "magcache": {"strategy": "magcache"},
    "easycache": {"strategy": "easycache", "params": {"threshold": 0.4, "warmup_steps": 2}},
    "fbcache": {"strategy": "fbcache", "params": {"threshold": 0.2}},
    "dbcache": {
        "strategy": "dbcache",
        "params": {
            "Fn_compute_blocks": 1,
            "Bn_compute_blocks": 1,
            "max_warmup_steps": 2,
            "residual_diff_threshold": 0.2,
        },
    },
    "taylorseer": {"strategy": "taylorseer", "params": {"warmup_steps": 2, "interval": 3}},
    "taocache": {"strategy": "taocache", "params": {"early": "magcache"}},
    "chipmunk": {"strategy": "chipmunk"},
}
MODES = ("ulysses", "cfg", "ring")
WORLD_SIZE = 2


@pytest.fixture(scope="module")
def ranks(home: Path, wan_tiny: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, np.ndarray]]:
    """The two ranks' outputs (wan_tiny first: the preset is built before the ranks load it)."""
    out = tmp_path_factory.mktemp("ranks")
    cases = json.dumps({mode: {name: BASE | {"cache": cache} for name, cache in CACHES.items()} for mode in MODES})
    port = free_port()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(RANKS),
                str(rank),
                str(WORLD_SIZE),
                str(port),
                str(home),
                str(out / f"{rank}.npz"),
                cases,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD_SIZE)
    ]
    try:
        logs = [process.communicate(timeout=1500)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 0, log[-3000:]
    return [dict(np.load(out / f"{rank}.npz")) for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def references() -> dict:
    return {}


@pytest.mark.parametrize("mode", ["ulysses", "cfg"])
@pytest.mark.parametrize("case", list(CACHES))
def test_two_ranks_give_the_single_process_frames_and_decisions(
    ranks, references, wan_tiny, profiles: ProfileStore, mode: str, case: str
) -> None:
    if case == "chipmunk" and mode == "ulysses":
        for arrays in ranks:
            assert "chipmunk cannot run under sequence parallelism" in str(arrays[f"{mode}/{case}/refused"])
        return
    if case not in references:
        references[case] = generate(wan_tiny, GenerationRequest(**BASE, cache=CACHES[case]), profiles)
    reference = references[case]
    for rank, arrays in enumerate(ranks):
        difference = float(np.abs(arrays[f"{mode}/{case}/frames"] - reference.frames).max())
        assert difference <= TOLERANCE, f"rank {rank}: max abs difference {difference}"
        for branch, figures in reference.cache.branches.items():
            decisions = "".join("C" if computed else "." for computed in arrays[f"{mode}/{case}/{branch}"])
            assert decisions == figures.schedule, f"rank {rank}, {branch}"


def test_ulysses_gives_each_rank_half_the_tokens_and_cfg_all(ranks, wan_tiny) -> None:
    # Latent frames x patches per latent frame (VAE: 4x in time, 8x in space; patches 2x2).
    full = ((9 - 1) // 4 + 1) * (64 // 8 // 2) * (64 // 8 // 2)
    for arrays in ranks:
        assert set(arrays["ulysses/tokens"].tolist()) == {full // WORLD_SIZE}
        assert set(arrays["cfg/tokens"].tolist()) == {full}


def test_ring_is_refused_on_cpu_with_the_reason(ranks) -> None:
    for arrays in ranks:
        assert "ring attention needs an attention backend that returns the log-sum-exp" in str(arrays["ring/refused"])
