"""One rank of a CPU (gloo) group generating the same requests: run by tests/test_parallel.py, one process per rank.

``python tests/parallel_ranks.py RANK WORLD_SIZE PORT HOME OUT CASES_JSON`` joins the group and, for each mode
and case of CASES_JSON (``{mode: {case: request fields}}``), loads wan-tiny under HOME with that parallelism and
writes to OUT (an ``.npz`` per rank) the frames, each branch's decisions and the token count the second block saw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from core import parallel
from core.caching.profiles import ProfileStore
from core.contract.request import GenerationRequest
from core.errors import SkipstepError
from core.generation import generate
from core.models import load_model
from core.settings import Settings


def _counted_tokens(block: torch.nn.Module) -> list[int]:
    """The sequence length of each computed call of ``block``, as it is called."""
    tokens: list[int] = []

    def count(_block: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        tokens.append(kwargs.get("hidden_states", args[0] if args else None).shape[1])

    block.register_forward_pre_hook(count, with_kwargs=True)
    return tokens


def main(rank: int, world_size: int, port: int, home: str, out: str, cases: str) -> None:
    torch.set_num_threads(1)
    settings = Settings(home=Path(home), device="cpu")
    profiles = ProfileStore(settings.profiles_dir)
    parallel.init_group(rank, world_size, port, torch.device("cpu"), timeout_s=120)
    arrays: dict[str, np.ndarray] = {}
    for mode, requests in json.loads(cases).items():
        model = load_model("wan-tiny", settings)
        try:
            model.parallel = parallel.enable(model.transformer, mode)
        except SkipstepError as exc:
            arrays[f"{mode}/refused"] = np.array(str(exc))
            continue
        tokens = _counted_tokens(model.family.blocks(model.transformer)[1])
        for name, fields in requests.items():
            try:
                result = generate(model, GenerationRequest(**fields), profiles)
            except SkipstepError as exc:
                arrays[f"{mode}/{name}/refused"] = np.array(str(exc))
                continue
            arrays[f"{mode}/{name}/frames"] = result.frames
            for branch, figures in result.cache.branches.items():
                arrays[f"{mode}/{name}/{branch}"] = np.array([step == "C" for step in figures.schedule])
        arrays[f"{mode}/tokens"] = np.array(tokens)
    np.savez(out, **arrays)
    parallel.close_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:7])
