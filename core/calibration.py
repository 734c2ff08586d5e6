"""Calibration: uncached runs that record, per step and branch, what the strategies need.

- MagCache: ``mean over tokens of ||r_t|| / ||r_(t-1)||`` of the block-stack residual ``r``.
- TeaCache: pairs (relative L1 change of the compared timestep embedding, relative L1 change
  of the model output) between consecutive steps, and the 4th-degree polynomial fitted to them.
- TaoCache: per step, the cosine similarity and norm ratio of the block-stack output's delta
  (this step's output minus the previous one's) to the previous delta.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import numpy as np
import torch
from PIL import Image

from core.caching.base import BranchState, RunPlan, TimestepCache
from core.caching.none import NoCache
from core.caching.profiles import Profile, TaoCacheTable, transformer_signature
from core.caching.teacache import relative_l1
from core.contract.experts import qualified
from core.contract.loras import LoraSpec, adapter_set
from core.contract.request import GenerationRequest
from core.contract.shapes import Shape
from core.errors import InvalidRequest
from core.generation import expert_caches, run
from core.models import LoadedModel

COMPARED = ("temb", "timestep_proj")
POLY_DEGREE = 4
# A degree-4 fit needs five points from one prompt: six steps give five consecutive pairs.
MIN_STEPS = POLY_DEGREE + 2


class CalibrationRecorder(TimestepCache):
    """Computes every step, recording residual-magnitude ratios and model outputs per branch."""

    name = "calibration"
    reuses = False

    def prepare(self, plan: RunPlan) -> None:
        super().prepare(plan)
        self.mag_ratios: dict[str, list[float]] = {branch: [] for branch in plan.branches}
        self.outputs: dict[str, list[torch.Tensor]] = {branch: [] for branch in plan.branches}
        self._last_norms: dict[str, torch.Tensor] = {}
        self._current: str | None = None
        self.delta_cosines: dict[str, list[float]] = {branch: [] for branch in plan.branches}
        self.delta_ratios: dict[str, list[float]] = {branch: [] for branch in plan.branches}
        self._last_output: dict[str, torch.Tensor] = {}
        self._last_delta: dict[str, torch.Tensor] = {}

    def signals(self) -> dict[str, Sequence[float]]:
        return {branch: [0.0] * self.plan.num_steps for branch in self.plan.branches}

    def after_compute(self, state: BranchState, unit_input: torch.Tensor, unit_output: torch.Tensor) -> None:
        norms = torch.linalg.vector_norm((unit_output - unit_input).float(), dim=-1)
        previous = self._last_norms.get(state.name)
        ratio = 1.0 if previous is None else (norms / previous).mean().item()
        self.mag_ratios[state.name].append(ratio)
        self._last_norms[state.name] = norms
        self._current = state.name
        self._record_delta(state.name, unit_output.detach().float().flatten())

    def _record_delta(self, branch: str, output: torch.Tensor) -> None:
        previous_output = self._last_output.get(branch)
        previous_delta = self._last_delta.get(branch)
        cosine = ratio = 1.0
        if previous_output is not None:
            delta = output - previous_output
            if previous_delta is not None:
                cosine = torch.nn.functional.cosine_similarity(delta, previous_delta, dim=0).item()
                ratio = (delta.norm() / previous_delta.norm()).item()
            self._last_delta[branch] = delta
        self._last_output[branch] = output
        self.delta_cosines[branch].append(cosine)
        self.delta_ratios[branch].append(ratio)

    def record_output(self, _module: torch.nn.Module, _args: object, output: object) -> None:
        sample = output[0] if isinstance(output, tuple) else output.sample
        self.outputs[self._current].append(sample.detach().float().cpu())

    def output_changes(self, branch: str) -> list[float]:
        return relative_l1(torch.stack(self.outputs[branch]))[1:]


def calibrate(
    model: LoadedModel,
    shape: Shape,
    prompts: Sequence[str],
    name: str | None = None,
    guidance_scale: float = 5.0,
    seed: int = 0,
    on_prompt: Callable[[int, str], None] | None = None,
    loras: Sequence[LoraSpec] = (),
    image: Image.Image | None = None,
) -> Profile:
    """Run ``prompts`` uncached at ``shape`` (with the LoRA adapters ``loras``; an image-to-video model from the first
    frame ``image``) and build a profile from what they record."""
    if shape.num_inference_steps < MIN_STEPS:
        raise InvalidRequest("num_inference_steps", f"calibration needs at least {MIN_STEPS} steps")
    if not prompts:
        raise InvalidRequest("prompts", "calibration needs at least one prompt")
    # The compared embeddings depend on the timesteps alone: the same for every prompt. With two experts, each
    # expert's tables (keyed <expert>/<branch>, <expert>/<tensor>) cover the steps it runs, from its own weights.
    timesteps = model.family.timesteps(model.pipeline, shape, model.device)
    spans = expert_caches(model, shape, lambda *_: NoCache()).experts
    input_changes = {}
    for span in spans:
        embeddings = model.family.timestep_embeddings(span.transformer, timesteps[span.steps.start : span.steps.stop])
        for compared in COMPARED:
            input_changes[qualified(span.name, compared)] = relative_l1(embeddings[compared])[1:]
    ratios: dict[str, list[list[float]]] = {}
    cosines: dict[str, list[list[float]]] = {}
    delta_ratios: dict[str, list[list[float]]] = {}
    samples: dict[str, list[tuple[float, float]]] = {key: [] for key in input_changes}
    for index, prompt in enumerate(prompts):
        if on_prompt is not None:
            on_prompt(index, prompt)
        request = GenerationRequest.at(
            shape, prompt, guidance_scale=guidance_scale, seed=seed + index, loras=list(loras)
        )
        caches = expert_caches(model, shape, lambda *_: CalibrationRecorder())
        with ExitStack() as hooks:
            for expert in caches.experts:
                handle = expert.transformer.register_forward_hook(expert.cache.record_output)
                hooks.callback(handle.remove)
            run(model, request, shape, caches, image=image)
        for expert in caches.experts:
            recorder = expert.cache
            for branch in recorder.plan.branches:
                key = qualified(expert.name, branch)
                ratios.setdefault(key, []).append(recorder.mag_ratios[branch])
                cosines.setdefault(key, []).append(recorder.delta_cosines[branch])
                delta_ratios.setdefault(key, []).append(recorder.delta_ratios[branch])
                output_changes = recorder.output_changes(branch)
                for compared in COMPARED:
                    pairs = zip(input_changes[qualified(expert.name, compared)], output_changes, strict=True)
                    samples[qualified(expert.name, compared)].extend(pairs)

    return Profile(
        name=name or default_profile_name(model.name, shape, loras),
        model=model.name,
        loras=adapter_set(loras),
        transformer=transformer_signature(model.transformer),
        width=shape.width,
        height=shape.height,
        num_frames=shape.num_frames,
        num_inference_steps=shape.num_inference_steps,
        guidance_scale=guidance_scale,
        source=f"skipstep calibrate: {len(prompts)} prompt(s), seeds from {seed}"
        + (", from a first frame" if image is not None else ""),
        prompts=list(prompts),
        magcache={branch: np.mean(runs, axis=0).tolist() for branch, runs in ratios.items()},
        # An expert that runs few steps gives too few distinct input changes for a polynomial: no TeaCache for it.
        teacache={key: fit_polynomial(pairs) for key, pairs in samples.items() if _fittable(pairs)} or None,
        teacache_samples=samples,
        taocache={
            branch: TaoCacheTable(
                cosine=np.mean(cosines[branch], axis=0).tolist(),
                norm_ratio=np.mean(delta_ratios[branch], axis=0).tolist(),
            )
            for branch in cosines
        },
    )


def _fittable(pairs: Sequence[tuple[float, float]]) -> bool:
    return len({change for change, _ in pairs}) > POLY_DEGREE


def fit_polynomial(pairs: Sequence[tuple[float, float]]) -> list[float]:
    """Least-squares degree-4 fit of output change on input change, in np.poly1d order."""
    x, y = np.array(pairs, dtype=np.float64).T
    fitted = np.polynomial.Polynomial.fit(x, y, POLY_DEGREE).convert()
    coefficients = np.zeros(POLY_DEGREE + 1)
    coefficients[: len(fitted.coef)] = fitted.coef
    return coefficients[::-1].tolist()


def default_profile_name(model_name: str, shape: Shape, loras: Sequence[LoraSpec] = ()) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name.rstrip("/").split("/")[-1]).strip("-.") or "model"
    adapters = "".join(f"-{lora.name}{lora.weight:g}" for lora in sorted(loras, key=lambda lora: lora.name))
    return f"{stem}-{shape.width}x{shape.height}x{shape.num_frames}-{shape.num_inference_steps}steps{adapters}"
