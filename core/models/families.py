"""What skipstep needs to know about each diffusers video-transformer family.

A family adapter names the transformer's block stack, computes the timestep embeddings
that TeaCache compares, says how the family's pipeline names its CFG branches, encodes
prompts; its size rules live in the request contract (``core.contract.shapes``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, retrieve_timesteps

from core.contract.shapes import LTX, WAN, FamilyRules, Shape, family_for_transformer


def in_fp32(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` with its parameters in float32, the module itself unchanged."""
    parameters = {name: parameter.float() for name, parameter in module.named_parameters()}
    return torch.func.functional_call(module, parameters, args, kwargs)


class ModelFamily:
    """The engine side of a family; its size rules and default shape are ``rules`` (the request contract)."""

    rules: ClassVar[FamilyRules]
    blocks_attribute: ClassVar[str]
    # Text tokens per prompt, as the family's pipeline pads them when it encodes prompts itself.
    max_sequence_length: ClassVar[int]

    @property
    def name(self) -> str:
        return self.rules.name

    def blocks(self, transformer: torch.nn.Module) -> torch.nn.ModuleList:
        return getattr(transformer, self.blocks_attribute)

    def branches(self, do_cfg: bool) -> list[str]:
        """Cache-context names of the transformer calls of one denoising step, in call order."""
        return ["cond", "uncond"] if do_cfg else ["cond"]

    def timesteps(self, pipe: DiffusionPipeline, shape: Shape, device: torch.device) -> torch.Tensor:
        """The timesteps the family's pipeline will denoise at, computed as it computes them."""
        pipe.scheduler.set_timesteps(shape.num_inference_steps, device=device)
        return pipe.scheduler.timesteps

    def timestep_embeddings(self, transformer: torch.nn.Module, timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-timestep embeddings, one row per timestep: ``temb`` and its projection ``timestep_proj``."""
        raise NotImplementedError

    def encode_prompt(
        self, pipe: DiffusionPipeline, prompt: str, negative_prompt: str, do_cfg: bool, device: torch.device
    ) -> dict[str, Any]:
        """Keyword arguments that hand the pipeline its already-encoded prompts."""
        raise NotImplementedError

    def call_kwargs(self, fps: int) -> dict[str, Any]:
        return {}


class WanFamily(ModelFamily):
    rules = WAN
    blocks_attribute = "blocks"
    max_sequence_length = 512

    @torch.no_grad()
    def timestep_embeddings(self, transformer: torch.nn.Module, timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        # In fp32 whatever the model's dtype, as TeaCache's reference computes them.
        embedder = transformer.condition_embedder
        sinusoid = embedder.timesteps_proj(timesteps).float()
        temb = in_fp32(embedder.time_embedder, sinusoid)
        timestep_proj = in_fp32(embedder.time_proj, embedder.act_fn(temb))
        return {"temb": temb, "timestep_proj": timestep_proj}

    def encode_prompt(
        self, pipe: DiffusionPipeline, prompt: str, negative_prompt: str, do_cfg: bool, device: torch.device
    ) -> dict[str, Any]:
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=do_cfg,
            max_sequence_length=self.max_sequence_length,
            device=device,
        )
        return {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_embeds}


class LTXFamily(ModelFamily):
    rules = LTX
    blocks_attribute = "transformer_blocks"
    max_sequence_length = 128

    def branches(self, do_cfg: bool) -> list[str]:
        # LTXPipeline runs CFG as one batched call: both branches share a cache context.
        return ["cond_uncond"] if do_cfg else ["cond"]

    def timesteps(self, pipe: DiffusionPipeline, shape: Shape, device: torch.device) -> torch.Tensor:
        # As LTXPipeline.__call__: linear sigmas, shifted by the latent sequence length.
        steps = shape.num_inference_steps
        latent_frames = (shape.num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
        tokens = (
            latent_frames
            * (shape.height // pipe.vae_spatial_compression_ratio)
            * (shape.width // pipe.vae_spatial_compression_ratio)
        )
        config = pipe.scheduler.config
        mu = calculate_shift(
            tokens,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        timesteps, _ = retrieve_timesteps(
            pipe.scheduler, steps, device, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu
        )
        return timesteps

    @torch.no_grad()
    def timestep_embeddings(self, transformer: torch.nn.Module, timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        timestep_proj, temb = in_fp32(
            transformer.time_embed, timesteps, batch_size=len(timesteps), hidden_dtype=torch.float32
        )
        return {"temb": temb, "timestep_proj": timestep_proj}

    def encode_prompt(
        self, pipe: DiffusionPipeline, prompt: str, negative_prompt: str, do_cfg: bool, device: torch.device
    ) -> dict[str, Any]:
        embeds, mask, negative_embeds, negative_mask = pipe.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=do_cfg,
            max_sequence_length=self.max_sequence_length,
            device=device,
        )
        return {
            "prompt_embeds": embeds,
            "prompt_attention_mask": mask,
            "negative_prompt_embeds": negative_embeds,
            "negative_prompt_attention_mask": negative_mask,
        }

    def call_kwargs(self, fps: int) -> dict[str, Any]:
        return {"frame_rate": fps}


ENGINES: dict[str, ModelFamily] = {family.name: family for family in (WanFamily(), LTXFamily())}


def family_of(transformer: torch.nn.Module) -> ModelFamily:
    return ENGINES[family_for_transformer(type(transformer).__name__).name]
