"""What skipstep needs to know about each diffusers video-transformer family.

A family adapter names the transformer's block stack, computes the timestep embeddings
that TeaCache compares, says how the family's pipeline names its CFG branches, encodes
prompts, and carries the size rules of the family's VAE and patching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, retrieve_timesteps


@dataclass(frozen=True)
class Shape:
    width: int
    height: int
    num_frames: int
    num_inference_steps: int


class ModelFamily:
    name: ClassVar[str]
    transformer_class: ClassVar[str]
    blocks_attribute: ClassVar[str]
    # Pixels per latent token side (VAE downsampling x patch size), and the temporal rule
    # num_frames % temporal_multiple == 1.
    spatial_multiple: ClassVar[int]
    temporal_multiple: ClassVar[int]
    default_shape: ClassVar[Shape]
    # Text tokens per prompt, as the family's pipeline pads them when it encodes prompts itself.
    max_sequence_length: ClassVar[int]

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
    name = "wan"
    transformer_class = "WanTransformer3DModel"
    blocks_attribute = "blocks"
    spatial_multiple = 16
    temporal_multiple = 4
    default_shape = Shape(width=832, height=480, num_frames=81, num_inference_steps=50)
    max_sequence_length = 512

    @torch.no_grad()
    def timestep_embeddings(self, transformer: torch.nn.Module, timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        embedder = transformer.condition_embedder
        text_dim = embedder.text_embedder.linear_1.in_features
        # The text part is irrelevant here; one token keeps the call cheap.
        text = torch.zeros(len(timesteps), 1, text_dim, device=timesteps.device, dtype=transformer.dtype)
        temb, timestep_proj, _, _ = embedder(timesteps, text)
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
    name = "ltx"
    transformer_class = "LTXVideoTransformer3DModel"
    blocks_attribute = "transformer_blocks"
    spatial_multiple = 32
    temporal_multiple = 8
    default_shape = Shape(width=704, height=480, num_frames=161, num_inference_steps=50)
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
        timestep_proj, temb = transformer.time_embed(
            timesteps, batch_size=len(timesteps), hidden_dtype=transformer.dtype
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


FAMILIES: dict[str, ModelFamily] = {family.transformer_class: family for family in (WanFamily(), LTXFamily())}


def family_of(transformer: torch.nn.Module) -> ModelFamily:
    name = type(transformer).__name__
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"unsupported transformer {name}; supported: {known}") from None
