"""Models as clients see them: the offline presets (name, family, default shape; the builders are
engine code), and what a configured model is, without loading any weights (``describe`` reads its files
where they are on this machine; ``core.jobs.catalogue`` reads what its workers published)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from core.contract.shapes import HUNYUAN, LTX, SIZE_FIELDS, WAN, WAN22, FamilyRules, Shape, family_for_transformer
from core.contract.strategies import CacheSpec
from core.errors import InvalidRequest, ModelLoadError

TINY_SHAPE = Shape(width=128, height=128, num_frames=17, num_inference_steps=20)
# What wan-tiny-trained was trained at.
TRAINED_TINY_SHAPE = Shape(width=64, height=64, num_frames=17, num_inference_steps=20)
# owner/name as the Hugging Face hub spells a repository.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


# The diffusers pipeline classes that take a first frame and need one.
IMAGE_PIPELINES = ("WanImageToVideoPipeline",)
# What of a pipeline's model_index.json and scheduler config a submit reads (the experts' boundary, the
# scheduler's shift, whether the timesteps are per token).
PIPELINE_KEYS = ("boundary_ratio", "expand_timesteps")
SCHEDULER_KEYS = ("flow_shift", "num_train_timesteps", "use_flow_sigmas")


def image_input(pipeline: dict[str, Any]) -> str | None:
    """Whether a model takes a first-frame image: ``required`` (an image-to-video pipeline), ``optional`` (Wan2.2
    TI2V: text, or text and image, to video) or None (text only); from its pipeline description."""
    if pipeline.get("class") in IMAGE_PIPELINES:
        return "required"
    if pipeline.get("expand_timesteps"):
        return "optional"
    return None


@dataclass(frozen=True)
class PresetInfo:
    name: str
    family: FamilyRules
    default_shape: Shape
    description: str
    # The pipeline's class and the model_index/scheduler values a submit reads (PIPELINE_KEYS, SCHEDULER_KEYS).
    pipeline: dict[str, Any] = field(
        default_factory=lambda: {"class": "WanPipeline", "flow_shift": 5.0, "num_train_timesteps": 1000}
    )
    # Random weights: timings and schedules are real, fidelity figures say little. wan-tiny-trained draws the colours
    # its captions name (bench/results/wan-tiny-trained.md), so its fidelity figures measure something.
    untrained: bool = True


PRESETS: dict[str, PresetInfo] = {
    preset.name: preset
    for preset in (
        PresetInfo(
            "wan-tiny-trained",
            WAN,
            TRAINED_TINY_SHAPE,
            "small Wan2.1 pipeline trained here (training/train_wan_tiny.py) on synthetic clips of coloured shapes",
            {"class": "WanPipeline", "flow_shift": 3.0, "num_train_timesteps": 1000},
            untrained=False,
        ),
        PresetInfo("wan-tiny", WAN, TINY_SHAPE, "small random Wan2.1 pipeline for tests, shapes and CPU benchmarks"),
        PresetInfo("ltx-tiny", LTX, TINY_SHAPE, "small random LTX-Video pipeline"),
        PresetInfo("hunyuan-tiny", HUNYUAN, TINY_SHAPE, "small random HunyuanVideo pipeline (embedded guidance)"),
        PresetInfo(
            "wan2.1-1.3b-random",
            WAN,
            WAN.default_shape,
            "Wan2.1-T2V-1.3B's transformer and VAE shapes with random weights, for GPU benchmarks",
        ),
        PresetInfo(
            "wan-i2v-tiny",
            WAN,
            TINY_SHAPE,
            "small random Wan2.1 image-to-video pipeline (CLIP image encoder)",
            {"class": "WanImageToVideoPipeline", "flow_shift": 5.0, "num_train_timesteps": 1000},
        ),
        PresetInfo(
            "wan2.2-ti2v-tiny",
            WAN22,
            TINY_SHAPE,
            "small random Wan2.2 TI2V-5B-shaped pipeline (Wan2.2's 16x VAE; text, or text and image, to video)",
            {"class": "WanPipeline", "expand_timesteps": True, "flow_shift": 5.0, "num_train_timesteps": 1000},
        ),
        PresetInfo(
            "wan2.2-t2v-a14b-tiny",
            WAN,
            TINY_SHAPE,
            "small random Wan2.2 T2V-A14B-shaped pipeline (high- and low-noise experts)",
            {"class": "WanPipeline", "boundary_ratio": 0.875, "flow_shift": 12.0, "num_train_timesteps": 1000},
        ),
        PresetInfo(
            "wan2.2-i2v-a14b-tiny",
            WAN,
            TINY_SHAPE,
            "small random Wan2.2 I2V-A14B-shaped pipeline (high- and low-noise experts, image to video)",
            {
                "class": "WanImageToVideoPipeline",
                "boundary_ratio": 0.9,
                "flow_shift": 5.0,
                "num_train_timesteps": 1000,
            },
        ),
    )
}


@dataclass(frozen=True)
class ModelInfo:
    """What a submit needs of a model, without loading it: published by a worker that loaded it
    (``core.jobs.catalogue``), or read from configuration alone (the preset catalogue, its config files)."""

    source: str
    # None while nothing describes the model: no worker has, and its files are not readable here.
    family: FamilyRules | None
    default_shape: Shape | None
    # The transformer's class and config (transformer/config.json); empty when not known here (a preset that
    # nothing has built or described yet).
    transformer: dict[str, Any] = field(default_factory=dict)
    # From the worker that described the model: the calibration profiles it holds for this transformer (JSON
    # documents) and the cache strategies that apply. None when read from configuration.
    profiles: tuple[dict[str, Any], ...] | None = None
    strategies: tuple[str, ...] | None = None
    # The worker (host:pid) that described it and when; None when read from configuration.
    described_by: str | None = None
    described_at: datetime | None = None
    # The pipeline's class and what a submit reads of its config (PIPELINE_KEYS, SCHEDULER_KEYS); empty when not
    # known here.
    pipeline: dict[str, Any] = field(default_factory=dict)
    # The transformer's linear modules, name -> [in_features, out_features], that a LoRA may adapt; None when no
    # worker has described them.
    lora_modules: dict[str, list[int]] | None = None

    @property
    def image_input(self) -> str | None:
        return image_input(self.pipeline)

    @property
    def boundary_ratio(self) -> float | None:
        """Two experts (Wan2.2 A14B): the share of the training timesteps from which the high-noise one runs."""
        return self.pipeline.get("boundary_ratio")

    @property
    def block_count(self) -> int | None:
        return self.family.block_count(self.transformer) if self.family else None

    def check_cache(self, cache: CacheSpec) -> None:
        """InvalidRequest if the strategy's parameters cannot run on this transformer (where its config is
        known; otherwise the worker checks when it claims the job)."""
        blocks = self.block_count
        rule = cache.parsed_params().block_rule(blocks) if blocks else None
        if rule is not None:
            raise InvalidRequest("cache.params", rule)

    def pending_checks(self, cache: CacheSpec) -> list[str] | None:
        """The fields whose rules for this model cannot be checked without knowing more of it; None if none."""
        pending = [] if self.family else [name for name in SIZE_FIELDS if name != "num_inference_steps"]
        if self.block_count is None and cache.parsed_params().depends_on_blocks:
            pending.append("cache.params")
        return pending or None


def same_model(source: str, other: str) -> bool:
    """Whether two configured sources name the same model: the same preset or hub id, or directories of the same
    name (the API host need not mount a model, and worker hosts may mount it at different paths)."""
    if is_hub_id(source) or is_hub_id(other) or source in PRESETS or other in PRESETS:
        return source == other
    return Path(source).expanduser().name == Path(other).expanduser().name


def model_key(source: str) -> str:
    """What identifies a model's weights across hosts, as ``same_model`` compares sources: a preset name or hub id,
    else the model directory's name. Frontiers are measured per model key."""
    if is_hub_id(source) or source in PRESETS:
        return source
    return Path(source).expanduser().name


def is_hub_id(source: str) -> bool:
    """``owner/name`` that is not a path on this machine: a Hugging Face hub repository."""
    return bool(HUB_ID.fullmatch(source)) and not Path(source).expanduser().exists()


def hub_cache() -> Path:
    """Where the hub client keeps repositories: HF_HUB_CACHE, else HF_HOME/hub, as huggingface_hub reads them."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def hub_snapshot(repo_id: str, revision: str = "main") -> Path | None:
    """The cached snapshot of a hub model (models--owner--name/snapshots/<commit>), None if not cached."""
    repo = hub_cache() / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    return snapshot if (snapshot / "model_index.json").is_file() else None


def fetch_hint(repo_id: str) -> str:
    return (
        f"model {repo_id} is not in the Hugging Face cache ({hub_cache()}) and this machine cannot download it: "
        f"fetch it with `huggingface-cli download {repo_id}` (or set HF_HOME to a cache that holds it)"
    )


def model_files(source: str, presets_dir: Path) -> Path | None:
    """The directory that holds a source's diffusers files, None if it has none on this machine yet."""
    if source in PRESETS:
        path = presets_dir / source
    elif is_hub_id(source):
        return hub_snapshot(source)
    else:
        path = Path(source).expanduser()
    return path if (path / "model_index.json").is_file() else None


def describe(source: str, presets_dir: Path) -> ModelInfo:
    """The family, default shape and transformer config of a preset, a local diffusers directory or a hub
    id in the Hugging Face cache, from the preset catalogue and the model's JSON files."""
    folder = model_files(source, presets_dir)
    transformer = _transformer_config(folder) if folder is not None else {}
    if source in PRESETS:
        preset = PRESETS[source]
        pipeline = pipeline_config(folder) if folder is not None else preset.pipeline
        return ModelInfo(source, preset.family, preset.default_shape, transformer, pipeline=pipeline)
    if folder is None:
        if is_hub_id(source):
            raise ModelLoadError(fetch_hint(source))
        raise ModelLoadError(f"model directory {source} does not exist or has no model_index.json")
    try:
        family = family_for_transformer(transformer.get("class", ""), transformer)
    except ValueError as exc:
        raise ModelLoadError(f"model {source}: {exc}") from None
    return ModelInfo(source, family, family.default_shape, transformer, pipeline=pipeline_config(folder))


def pipeline_config(folder: Path) -> dict[str, Any]:
    """The pipeline's class and the values of its model_index.json and scheduler config that a submit reads."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
        scheduler_file = folder / "scheduler" / "scheduler_config.json"
        scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model {folder}: unreadable config: {exc}") from None
    described = {"class": index.get("_class_name", "")}
    described |= {key: index[key] for key in PIPELINE_KEYS if index.get(key) is not None}
    described |= {key: scheduler[key] for key in SCHEDULER_KEYS if key in scheduler}
    return described


def _transformer_config(folder: Path) -> dict[str, Any]:
    """The transformer's class (from model_index.json, else its config's ``_class_name``) and config."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
        config_file = folder / "transformer" / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model {folder}: unreadable config: {exc}") from None
    entry = index.get("transformer")
    class_name = entry[1] if isinstance(entry, list) and len(entry) == 2 else config.get("_class_name", "")
    return {"class": class_name} | {key: value for key, value in config.items() if not key.startswith("_")}
