"""Loading a video pipeline: a preset, a local diffusers-format directory or a Hugging Face hub id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, WanImageToVideoPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from core.caching.profiles import ProfileStore, applicable_strategies, config_signature
from core.contract.experts import HIGH_NOISE, LOW_NOISE
from core.contract.models import (
    PIPELINE_KEYS,
    SCHEDULER_KEYS,
    ModelInfo,
    fetch_hint,
    hub_snapshot,
    image_input,
    is_hub_id,
)
from core.contract.shapes import Shape
from core.errors import ModelLoadError
from core.models.attention import AttentionChoice, apply_attention_backend
from core.models.families import ModelFamily, family_of
from core.models.fp8 import PrecisionChoice, apply_precision
from core.models.lora import Adapters
from core.models.presets import PRESETS, ensure_preset
from core.models.prompts import PromptCache
from core.parallel import Parallelism
from core.settings import Settings, model_name

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Pipelines this process has loaded from their files (what a job's metrics report: adapters never reload one).
_loads = {"pipelines": 0}


def pipeline_loads() -> int:
    return _loads["pipelines"]


@dataclass
class LoadedModel:
    name: str
    path: Path
    pipeline: DiffusionPipeline
    family: ModelFamily
    default_shape: Shape
    attention: AttentionChoice
    precision: PrecisionChoice
    prompts: PromptCache
    # Set once the blocks are compiled (core.models.compile).
    compiled: bool = False
    # How this process shares each transformer call with the other ranks of a multi-device worker.
    parallel: Parallelism | None = None
    # The LoRA adapters jobs name, where the process can resolve them (a worker); None: requests name none.
    adapters: Adapters | None = None
    _image_pipeline: DiffusionPipeline | None = None

    @property
    def device(self) -> torch.device:
        return self.pipeline.transformer.device

    @property
    def text_device(self) -> torch.device:
        """Where the prompts are encoded (SKIPSTEP_TEXT_ENCODER_DEVICE; default: with the transformer)."""
        return self.pipeline.text_encoder.device

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipeline.transformer

    @property
    def experts(self) -> list[tuple[str, torch.nn.Module]]:
        """Each transformer with its expert name: ``[("", transformer)]``, or Wan2.2 A14B's high-noise
        ``transformer`` and low-noise ``transformer_2``."""
        second = getattr(self.pipeline, "transformer_2", None)
        if second is None:
            return [("", self.transformer)]
        return [(HIGH_NOISE, self.transformer), (LOW_NOISE, second)]

    @property
    def description(self) -> dict[str, Any]:
        """The pipeline's class and what a submit reads of its config (core.contract.models.pipeline_config)."""
        config, scheduler = self.pipeline.config, self.pipeline.scheduler.config
        described: dict[str, Any] = {"class": type(self.pipeline).__name__}
        described |= {key: config[key] for key in PIPELINE_KEYS if config.get(key) is not None}
        described |= {key: scheduler[key] for key in SCHEDULER_KEYS if key in scheduler}
        return described

    @property
    def image_input(self) -> str | None:
        """``required``, ``optional`` or None: whether jobs give this model a first frame."""
        return image_input(self.description)

    def pipeline_for(self, with_image: bool) -> DiffusionPipeline:
        """The pipeline that runs a job: the model's own, or (Wan2.2 TI2V given an image) its image-to-video
        pipeline over the same modules."""
        if with_image and not isinstance(self.pipeline, WanImageToVideoPipeline):
            if self._image_pipeline is None:
                self._image_pipeline = WanImageToVideoPipeline.from_pipe(self.pipeline)
                self._image_pipeline.set_progress_bar_config(disable=True)
            return self._image_pipeline
        return self.pipeline

    def info(self, profiles: ProfileStore) -> ModelInfo:
        """What a submit needs of this model, as a worker publishes it to the catalogue (core.jobs.catalogue):
        the transformer's config as its config.json holds it, and the profiles held for its architecture."""
        config = json.loads(self.transformer.to_json_string())
        transformer = {"class": type(self.transformer).__name__}
        transformer |= {key: value for key, value in config.items() if not key.startswith("_")}
        held = profiles.matching(config_signature(transformer))
        return ModelInfo(
            source=self.name,
            family=self.family.rules,
            default_shape=self.default_shape,
            transformer=transformer,
            profiles=tuple(profile.model_dump(mode="json") for profile in held),
            strategies=applicable_strategies(held),
            pipeline=self.description,
            lora_modules={
                name: [module.in_features, module.out_features]
                for name, module in self.transformer.named_modules()
                if isinstance(module, torch.nn.Linear)
            },
        )

    def encode_prompts(self, prompt: str, negative_prompt: str, do_cfg: bool) -> tuple[dict[str, Any], bool]:
        """The pipeline's keyword arguments for the encoded prompts, on the transformer's device, and whether
        they came from the prompt cache."""

        def encode() -> dict[str, Any]:
            encoded = self.family.encode_prompt(self.pipeline, prompt, negative_prompt, do_cfg, self.text_device)
            return {key: value.to(self.device) if torch.is_tensor(value) else value for key, value in encoded.items()}

        with torch.no_grad():
            return self.prompts.get((prompt, negative_prompt, do_cfg), encode)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_pipeline(path: Path, device: torch.device) -> DiffusionPipeline:
    """Load a pipeline saved in diffusers format: bf16 on CUDA, float32 on CPU."""
    _check_model_dir(path)
    return _from_pretrained(path, device, f"model directory {path}", local_files_only=True)


def load_hub_pipeline(repo_id: str, device: torch.device) -> DiffusionPipeline:
    """Load a hub model (``owner/name``) as diffusers does: from the Hugging Face cache (HF_HOME), downloading
    what is missing when the machine is online."""
    try:
        return _from_pretrained(repo_id, device, f"model {repo_id}")
    except ModelLoadError:
        if hub_snapshot(repo_id) is None:
            raise ModelLoadError(fetch_hint(repo_id)) from None
        raise


def _from_pretrained(source: Path | str, device: torch.device, what: str, **options: bool) -> DiffusionPipeline:
    _quiet_loading()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        pipeline = DiffusionPipeline.from_pretrained(source, dtype=dtype, **options)
    except Exception as exc:
        raise ModelLoadError(f"{what} could not be loaded: {type(exc).__name__}: {exc}") from exc
    _loads["pipelines"] += 1
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def load_model(source: str, settings: Settings, name: str | None = None) -> LoadedModel:
    """Load a preset by name (building it on first use), a local model directory or a hub id, as model ``name``
    (default: the source's own name) of the settings: its attention backend, FP8, prompt cache, VAE tiling and
    text-encoder placement."""
    device = resolve_device(settings.device)
    _quiet_loading()
    if source in PRESETS:
        # Parameters created on the device: random initialisation of a 1.3B model there takes seconds, not a minute.
        with device:
            path = ensure_preset(source, settings.presets_dir)
        pipeline = load_pipeline(path, device)
    elif is_hub_id(source):
        pipeline = load_hub_pipeline(source, device)
        path = hub_snapshot(source) or Path(source)
    else:
        path = Path(source).expanduser()
        pipeline = load_pipeline(path, device)
    try:
        family = family_of(pipeline.transformer)
    except ValueError as exc:
        raise ModelLoadError(f"model directory {path}: {exc}") from None
    default_shape = PRESETS[source].default_shape if source in PRESETS else family.rules.default_shape
    if settings.vae_tiling:
        pipeline.vae.enable_tiling()
    if settings.text_encoder_device is not None:
        text_device = torch.device(settings.text_encoder_device)
        for component, module in pipeline.components.items():
            if component.startswith("text_encoder") and module is not None:
                module.to(text_device)
    fp8 = (name or model_name(source)) in settings.fp8_model_names
    second = getattr(pipeline, "transformer_2", None)
    if second is not None:
        # The low-noise expert runs as the high-noise one does; the choices reported are the first's, the same.
        apply_attention_backend(second, settings.attention_backend)
        apply_precision(second, family, fp8)
    return LoadedModel(
        name=source,
        path=path,
        pipeline=pipeline,
        family=family,
        default_shape=default_shape,
        attention=apply_attention_backend(pipeline.transformer, settings.attention_backend),
        precision=apply_precision(pipeline.transformer, family, fp8),
        prompts=PromptCache(settings.prompt_cache_size),
    )


def _quiet_loading() -> None:
    """Loading and saving progress bars would interleave with the CLI's own and the workers' logs."""
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist")
    index_file = path / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"model directory {path} has no model_index.json: not a diffusers pipeline") from None
    except ValueError as exc:
        raise ModelLoadError(f"{index_file} is not valid JSON: {exc}") from None
    problems = []
    for component, spec in index.items():
        if component.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        folder = path / component
        if not folder.is_dir() or not any(folder.iterdir()):
            problems.append(f"{component}/ is missing")
        elif (folder / "config.json").exists() and not any(
            f.name.endswith(_WEIGHT_SUFFIXES) or f.name.endswith(".index.json") for f in folder.iterdir()
        ):
            problems.append(f"{component}/ has no weights")
    if "transformer" not in index:
        problems.append("no transformer component")
    if problems:
        raise ModelLoadError(f"model directory {path} is incomplete: " + "; ".join(problems))
