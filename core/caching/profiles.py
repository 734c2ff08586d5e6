"""Calibration profiles: what the strategies need to know about one model at one shape.

A profile is a JSON document (this module imports no torch). The published Wan2.1-T2V-1.3B
constants ship as the built-in profile; ``skipstep calibrate`` writes more into the profiles
folder. A job names a profile or gets the nearest one for its model (transformer class and
dimensions), size and steps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from core.contract.loras import adapter_key
from core.contract.shapes import Shape
from core.contract.strategies import STRATEGIES
from core.errors import CacheConfigError

BUILTIN_DIR = Path(__file__).parent / "profiles"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"

# Transformer config keys that identify an architecture for calibration purposes.
_SIGNATURE_KEYS = (
    "num_layers",
    "num_single_layers",
    "num_attention_heads",
    "attention_head_dim",
    "ffn_dim",
    "in_channels",
    "out_channels",
    "text_dim",
    "cross_attention_dim",
    "caption_channels",
    "patch_size",
    "patch_size_t",
)


def transformer_signature(transformer: Any) -> dict[str, Any]:
    """A diffusers transformer's class and dimensions, from its config (no torch needed to read it)."""
    return config_signature({"class": type(transformer).__name__, **transformer.config})


def config_signature(config: dict[str, Any]) -> dict[str, Any]:
    """The signature of a transformer's ``class`` and config, as ``core.contract.models`` reads them from disk."""
    signature: dict[str, Any] = {"class": config["class"]}
    for key in _SIGNATURE_KEYS:
        if key in config:
            value = config[key]
            signature[key] = list(value) if isinstance(value, tuple) else value
    return signature


class TaoCacheTable(BaseModel):
    cosine: list[float]
    norm_ratio: list[float]


class Profile(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    model: str
    transformer: dict[str, Any]
    width: int
    height: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    source: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    prompts: list[str] = []
    # The LoRA adapters the model ran with ({"name", "weight"} each; core.contract.loras); empty: the base model.
    loras: list[dict[str, Any]] = []
    # MagCache: per CFG branch, the residual-magnitude ratio of each step to the previous one.
    magcache: dict[str, list[float]] | None = None
    # TeaCache: per compared tensor (temb, timestep_proj), np.poly1d-ordered coefficients that map
    # the relative L1 change of that tensor to the relative L1 change of the model output.
    teacache: dict[str, list[float]] | None = None
    # The measured (input change, output change) pairs the TeaCache polynomials were fitted to.
    teacache_samples: dict[str, list[tuple[float, float]]] | None = None
    # TaoCache: per CFG branch, per step, the cosine similarity and norm ratio of the output delta
    # (this step's output minus the previous step's) to the previous delta; 1.0 where undefined.
    taocache: dict[str, TaoCacheTable] | None = None

    def for_expert(self, expert: str) -> Profile:
        """The profile as one expert's cache reads it: tables keyed ``<expert>/<key>`` under their plain key (a
        key with no expert serves every expert); itself for a model with one transformer (expert "")."""
        if not expert:
            return self
        prefix = f"{expert}/"

        def view(tables: dict[str, Any] | None) -> dict[str, Any] | None:
            if tables is None:
                return None
            shared = {key: value for key, value in tables.items() if "/" not in key}
            own = {key.removeprefix(prefix): value for key, value in tables.items() if key.startswith(prefix)}
            return (shared | own) or None

        return self.model_copy(update={field: view(getattr(self, field)) for field in _TABLE_FIELDS})

    def matches(self, signature: dict[str, Any]) -> bool:
        return all(signature.get(key) == value for key, value in self.transformer.items())

    def distance(self, shape: Shape) -> tuple[float, float]:
        """How far this profile's calibration shape is from ``shape``: steps first, then tokens."""
        steps = abs(math.log(shape.num_inference_steps / self.num_inference_steps))
        volume = abs(
            math.log((shape.width * shape.height * shape.num_frames) / (self.width * self.height * self.num_frames))
        )
        return steps, volume


# The profile fields that hold per-branch or per-tensor tables, which an expert's cache reads its own of.
_TABLE_FIELDS = ("magcache", "teacache", "teacache_samples", "taocache")


class ProfileStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def all(self) -> list[Profile]:
        profiles = {}
        for folder in (BUILTIN_DIR, self.directory):
            for file in sorted(folder.glob("*.json")) if folder.is_dir() else ():
                profile = self._read(file)
                profiles.setdefault(profile.name, profile)
        return list(profiles.values())

    def get(self, name: str) -> Profile:
        for profile in self.all():
            if profile.name == name:
                return profile
        known = ", ".join(p.name for p in self.all()) or "none"
        raise CacheConfigError(f"cache.profile: unknown profile {name!r}; known profiles: {known}")

    def nearest(self, signature: dict[str, Any], shape: Shape, needs: str, loras: Sequence[Any] = ()) -> Profile | None:
        """The closest profile for this transformer that carries the data ``needs`` names, measured with the adapter
        set ``loras`` (else with none: the base model's)."""
        return closest(self.matching(signature), shape, needs, loras)

    def matching(self, signature: dict[str, Any]) -> list[Profile]:
        """The profiles calibrated on this transformer's architecture."""
        return [p for p in self.all() if p.matches(signature)]

    def check_writable(self, name: str) -> None:
        """Refuse, before any work, a name that save() would refuse."""
        if not re.match(NAME_PATTERN, name):
            raise CacheConfigError(f"profile name {name!r}: letters, digits, '.', '_' and '-' only, at most 100")
        if (BUILTIN_DIR / f"{name}.json").exists():
            raise CacheConfigError(f"profile name {name!r} is taken by a built-in profile")

    def save(self, profile: Profile) -> Path:
        self.check_writable(profile.name)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{profile.name}.json"
        staging = path.with_suffix(".json.tmp")
        staging.write_text(profile.model_dump_json(indent=1))
        staging.replace(path)
        return path

    @staticmethod
    def _read(file: Path) -> Profile:
        try:
            return Profile.model_validate_json(file.read_text())
        except (OSError, ValidationError) as exc:
            raise CacheConfigError(f"profile file {file} is unreadable: {exc}") from None


def closest(profiles: Iterable[Profile], shape: Shape, needs: str, loras: Sequence[Any] = ()) -> Profile | None:
    """Of ``profiles``, the one nearest ``shape`` that carries the data ``needs`` names: of those measured with the
    adapter set ``loras`` if any is, else of the base model's (measured with none)."""
    candidates = [p for p in profiles if getattr(p, needs) is not None]
    wanted = adapter_key(loras)
    same = [p for p in candidates if adapter_key(p.loras) == wanted] or [p for p in candidates if not p.loras]
    return min(same, key=lambda p: p.distance(shape), default=None)


def applicable_strategies(profiles: Iterable[Profile]) -> tuple[str, ...]:
    """The cache strategies that can run with these profiles: those needing no calibration, and those whose data
    one of them carries."""
    held = list(profiles)
    return tuple(
        name
        for name, info in STRATEGIES.items()
        if info.needs is None or any(getattr(p, info.needs) is not None for p in held)
    )
