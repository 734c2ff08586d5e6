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

from core.contract.shapes import HUNYUAN, LTX, WAN, WAN22, FamilyRules, Shape, family_for_transformer


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

    def block_lists(self, transformer: torch.nn.Module) -> list[torch.nn.ModuleList]:
        """The model's own lists of blocks, in call order (one for most families)."""
        return [getattr(transformer, self.blocks_attribute)]

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        """Every block, in call order: the cached unit is a run of them."""
        return [block for blocks in self.block_lists(transformer) for block in blocks]

    def block_hidden_states(self, output: Any) -> torch.Tensor:
        """The video tokens from a block's output (blocks that also carry text tokens return both)."""
        return output

    def skipped_block_output(self, hidden_states: torch.Tensor, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What a skipped block returns to the loop that called it, given the video tokens to pass on."""
        return hidden_states

    def branches(self, do_cfg: bool) -> list[str]:
        """Cache-context names of the transformer calls of one denoising step, in call order."""
        return list(self.rules.branches(do_cfg))

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

    def sparse_layers(self, block: torch.nn.Module) -> tuple[str, str]:
        """Attribute names of a block's self-attention and feed-forward, which Chipmunk's sparse deltas replace."""
        raise NotImplementedError(f"the {self.name} family's blocks have no sparse-delta layers here")

    def token_grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int]:
        """Latent tokens per frame axis, row and column of a transformer call: the layout of its token sequence."""
        raise NotImplementedError(f"the {self.name} family's token layout is not described here")


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

    def sparse_layers(self, block: torch.nn.Module) -> tuple[str, str]:
        return "attn1", "ffn"

    def token_grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int]:
        # The latents, (batch, channels, frames, height, width), patchified in raster order.
        latents = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        frames, height, width = latents.shape[2:]
        patch_t, patch_h, patch_w = transformer.config.patch_size
        return frames // patch_t, height // patch_h, width // patch_w


class Wan22Family(WanFamily):
    """Wan2.2 TI2V-5B: the Wan transformer on the latents of Wan2.2's more compressed VAE."""

    rules = WAN22


class LTXFamily(ModelFamily):
    rules = LTX
    blocks_attribute = "transformer_blocks"
    max_sequence_length = 128

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

    def sparse_layers(self, block: torch.nn.Module) -> tuple[str, str]:
        return "attn1", "ff"

    def token_grid(self, transformer: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int]:
        # LTXPipeline packs the latents itself and passes their grid.
        config = transformer.config
        return (
            kwargs["num_frames"] // config.patch_size_t,
            kwargs["height"] // config.patch_size,
            kwargs["width"] // config.patch_size,
        )


class HunyuanFamily(ModelFamily):
    """HunyuanVideo: dual-stream blocks, then single-stream blocks, each returning (video, text) tokens.

    Its guidance is embedded (a guidance-scale input of the transformer, distilled from CFG), so
    ``HunyuanVideoPipeline`` makes one transformer call per step: one branch, ``cond``, whatever the
    guidance scale. (True CFG, a second call, only runs with ``true_cfg_scale`` and a negative prompt,
    which skipstep does not pass.) Every strategy therefore sees one branch and its per-branch tables
    hold ``cond`` alone.
    """

    rules = HUNYUAN
    max_sequence_length = 256

    def block_lists(self, transformer: torch.nn.Module) -> list[torch.nn.ModuleList]:
        # The cached unit spans both stacks, as in the reference TeaCache/MagCache for HunyuanVideo.
        return [transformer.transformer_blocks, transformer.single_transformer_blocks]

    def block_hidden_states(self, output: Any) -> torch.Tensor:
        return output[0]

    def skipped_block_output(self, hidden_states: torch.Tensor, args: tuple, kwargs: dict[str, Any]) -> Any:
        text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
        return hidden_states, text

    def timesteps(self, pipe: DiffusionPipeline, shape: Shape, device: torch.device) -> torch.Tensor:
        # As HunyuanVideoPipeline.__call__: linear sigmas from 1, shifted by the scheduler.
        steps = shape.num_inference_steps
        sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]
        timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=sigmas)
        return timesteps

    @torch.no_grad()
    def timestep_embeddings(self, transformer: torch.nn.Module, timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        # The timestep's part of the conditioning vector (the guidance and pooled-text parts are the
        # same at every step), and its projection into the first block's modulation.
        embedder = transformer.time_text_embed
        temb = embedder.timestep_embedder(embedder.time_proj(timesteps).to(transformer.dtype))
        norm = transformer.transformer_blocks[0].norm1
        return {"temb": temb, "timestep_proj": norm.linear(norm.silu(temb))}

    def encode_prompt(
        self, pipe: DiffusionPipeline, prompt: str, negative_prompt: str, do_cfg: bool, device: torch.device
    ) -> dict[str, Any]:
        embeds, pooled, mask = pipe.encode_prompt(
            prompt=prompt, device=device, max_sequence_length=self.max_sequence_length
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "prompt_attention_mask": mask}


ENGINES: dict[str, ModelFamily] = {
    family.name: family for family in (WanFamily(), Wan22Family(), LTXFamily(), HunyuanFamily())
}


def family_of(transformer: torch.nn.Module) -> ModelFamily:
    return ENGINES[family_for_transformer(type(transformer).__name__, dict(transformer.config)).name]
