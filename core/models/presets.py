"""Offline presets: small video pipelines, randomly initialised from configs or trained here.

A random preset is built once, saved with ``save_pretrained`` into the presets folder, and from
then on loaded through the same ``from_pretrained`` code as real weights. Its videos are
noise; its shapes, timings and cache decisions are real. A trained preset's diffusers directory
is committed in this package (``trained/``, made by ``python -m training.train_wan_tiny``) and
copied into the presets folder the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaModel,
    LlamaTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

from core.contract.models import PRESETS as PRESET_INFO
from core.contract.models import PresetInfo

# Bump when a builder changes, so that stale builds on disk are rebuilt.
PRESET_FORMAT = 1
MARKER = "skipstep_preset.json"

_WORDS = tuple(
    "a an the of in on at with and to from by over under through into near above below cat dog "
    "fox bird horse fish person woman man child car train boat city street forest river sea "
    "ocean beach mountain snow rain sun sky cloud night day light fire water tree flower field "
    "road house room window red blue green yellow white black golden orange small big tall old "
    "young slow fast running walking flying swimming jumping dancing sitting standing looking "
    "camera shot close wide aerial view cinematic realistic video scene motion neon glowing "
    "warm cold bright dark".split()
)


def offline_tokenizer(extra_words: tuple[str, ...] = ()) -> T5Tokenizer:
    """A unigram T5 tokenizer made from an inline vocabulary (and ``extra_words``): no file, no download."""
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    words = [(f"\u2581{word}", -1.0 - i / 100) for i, word in enumerate(_WORDS + extra_words)]
    pieces = [(ch, -10.0) for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"]
    pieces += [(f"\u2581{ch}", -9.0) for ch in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5Tokenizer(vocab=specials + words + pieces, extra_ids=0)


def _text_config(tokenizer: T5Tokenizer, d_model: int, d_ff: int, num_heads: int) -> dict[str, int]:
    return {
        "vocab_size": len(tokenizer),
        "d_model": d_model,
        "d_kv": d_model // num_heads,
        "d_ff": d_ff,
        "num_layers": 2,
        "num_heads": num_heads,
        "relative_attention_num_buckets": 32,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _wan_transformer(text_dim: int, transformer: dict[str, object], seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        text_dim=text_dim,
        freq_dim=256,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
        **{"in_channels": 16, "out_channels": 16, "patch_size": (1, 2, 2), **transformer},
    )


def _build_wan(
    text_dim: int,
    transformer: dict[str, object],
    vae: dict[str, object],
    text_heads: int = 8,
    flow_shift: float = 5.0,
    tokenizer: T5Tokenizer | None = None,
    pipeline_class: type[DiffusionPipeline] = WanPipeline,
    **pipeline_options: object,
) -> DiffusionPipeline:
    """A Wan pipeline of ``pipeline_class``; ``pipeline_options`` are its other components and config
    (``transformer_2`` and ``boundary_ratio`` for Wan2.2's two experts, the image encoder of Wan2.1 I2V,
    ``expand_timesteps`` for Wan2.2 TI2V)."""
    tokenizer = tokenizer or offline_tokenizer()
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(**_text_config(tokenizer, text_dim, 2 * text_dim, text_heads)))
    transformer_model = _wan_transformer(text_dim, transformer, seed=1)
    torch.manual_seed(2)
    vae_model = AutoencoderKLWan(**{"z_dim": 16, **vae})
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=flow_shift
    )
    return pipeline_class(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer_model,
        vae=vae_model,
        scheduler=scheduler,
        **pipeline_options,
    )


# The small Wan VAE of wan-tiny (Wan2.1's: 8x spatial, 4x temporal, 16 latent channels).
_TINY_VAE = {"base_dim": 32, "dim_mult": [1, 2, 2, 4], "num_res_blocks": 1}
# Wan2.2's VAE, small: 16x spatial (a 2x2 patchify around an 8x VAE), 4x temporal, 48 latent channels.
_TINY_VAE_22 = {
    "base_dim": 16,
    "decoder_base_dim": 16,
    "z_dim": 48,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_spatial": 16,
    "scale_factor_temporal": 4,
    "latents_mean": [0.0] * 48,
    "latents_std": [1.0] * 48,
}
# A smaller transformer than wan-tiny's for the image-to-video and two-expert presets: tests run them end to end.
_SMALL_TRANSFORMER = {"num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 256, "num_layers": 4}
# Wan2.1 I2V's transformer input: noise latents, the first frame's latents and a 4-channel frame mask.
_I2V_CHANNELS = {"in_channels": 36, "out_channels": 16}


def _tiny_image_encoder() -> tuple[CLIPVisionModel, CLIPImageProcessorPil]:
    torch.manual_seed(3)
    encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=64,
        )
    )
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return encoder, processor


def build_wan_i2v_tiny() -> DiffusionPipeline:
    """Wan2.1 I2V, small: the first frame's latents in the transformer input, its CLIP embedding in cross-attention."""
    image_encoder, image_processor = _tiny_image_encoder()
    # The image tokens (CLIP's hidden states) are projected to the transformer width and attended with added K/V.
    inner = _SMALL_TRANSFORMER["num_attention_heads"] * _SMALL_TRANSFORMER["attention_head_dim"]
    transformer = {**_SMALL_TRANSFORMER, **_I2V_CHANNELS, "image_dim": 64, "added_kv_proj_dim": inner}
    return _build_wan(
        text_dim=256,
        transformer=transformer,
        vae=_TINY_VAE,
        pipeline_class=WanImageToVideoPipeline,
        image_encoder=image_encoder,
        image_processor=image_processor,
    )


def build_wan22_ti2v_tiny() -> DiffusionPipeline:
    """Wan2.2 TI2V-5B's shape, small: one dense transformer on the 48-channel latents of Wan2.2's VAE, per-token
    timesteps (``expand_timesteps``: the first frame's tokens are the image, at t=0, when one is given)."""
    return _build_wan(
        text_dim=256,
        transformer={**_SMALL_TRANSFORMER, "in_channels": 48, "out_channels": 48},
        vae=_TINY_VAE_22,
        expand_timesteps=True,
    )


def build_wan22_t2v_a14b_tiny() -> DiffusionPipeline:
    """Wan2.2 T2V-A14B, small: a high-noise expert (``transformer``) for timesteps at or above 875 of 1000, then a
    low-noise expert (``transformer_2``); Wan2.2's T2V sampling shift, 12."""
    return _build_wan(
        text_dim=256,
        transformer=_SMALL_TRANSFORMER,
        vae=_TINY_VAE,
        flow_shift=12.0,
        transformer_2=_wan_transformer(256, _SMALL_TRANSFORMER, seed=4),
        boundary_ratio=0.875,
    )


def build_wan22_i2v_a14b_tiny() -> DiffusionPipeline:
    """Wan2.2 I2V-A14B, small: two experts switched at timestep 900, the first frame's latents in the input, no
    image encoder (Wan2.2 dropped CLIP)."""
    return _build_wan(
        text_dim=256,
        transformer={**_SMALL_TRANSFORMER, **_I2V_CHANNELS},
        vae=_TINY_VAE,
        pipeline_class=WanImageToVideoPipeline,
        transformer_2=_wan_transformer(256, {**_SMALL_TRANSFORMER, **_I2V_CHANNELS}, seed=4),
        boundary_ratio=0.9,
    )


def build_wan_tiny() -> DiffusionPipeline:
    return _build_wan(
        text_dim=256,
        transformer={"num_attention_heads": 8, "attention_head_dim": 64, "ffn_dim": 2048, "num_layers": 8},
        vae=_TINY_VAE,
    )


# Caption words of the trained preset's synthetic clips (training.clips) that the generic vocabulary lacks.
_SHAPE_WORDS = tuple(
    "square circle triangle moving left right up down top bottom center gray striped checkered background".split()
)


def wan_tiny_trained_architecture() -> DiffusionPipeline:
    """wan-tiny-trained before training: a Wan2.1 pipeline small enough to train on one CPU core in under an hour,
    with Wan2.1-1.3B's 480p scheduler (UniPC, flow shift 3). Its VAE compresses 4x in space (two downsampling
    levels, both also temporal: 4x in time), not Wan2.1's 8x: at base width 8, the 8x VAE learned several times
    slower (bench/results/wan-tiny-trained.md). The transformer's 4x4 patches keep the token count of 8x latents
    in 2x2 patches (64x64, 17 frames: 80 tokens), and the family's multiples of 16. The text encoder stays as
    initialised; ``training.train_wan_tiny`` trains the VAE and the transformer."""
    return _build_wan(
        text_dim=128,
        text_heads=4,
        flow_shift=3.0,
        tokenizer=offline_tokenizer(_SHAPE_WORDS),
        transformer={
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "ffn_dim": 512,
            "num_layers": 6,
            "patch_size": (1, 4, 4),
        },
        vae={
            "base_dim": 8,
            "dim_mult": [1, 2, 4],
            "temperal_downsample": [True, True],
            "scale_factor_spatial": 4,
            "num_res_blocks": 1,
        },
    )


def build_wan_13b_random() -> DiffusionPipeline:
    """Wan2.1-T2V-1.3B's transformer and VAE shapes with random weights, for GPU benchmarks.

    The text encoder is small (its output width is the real 4096): it runs once per job and
    is not what the caches accelerate.
    """
    return _build_wan(
        text_dim=4096,
        transformer={"num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960, "num_layers": 30},
        vae={"base_dim": 96, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2},
    )


def build_ltx_tiny() -> DiffusionPipeline:
    tokenizer = offline_tokenizer()
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(**_text_config(tokenizer, 128, 256, num_heads=4)))
    torch.manual_seed(1)
    transformer = LTXVideoTransformer3DModel(
        in_channels=32,
        out_channels=32,
        num_attention_heads=8,
        attention_head_dim=32,
        cross_attention_dim=256,
        num_layers=6,
        caption_channels=128,
    )
    torch.manual_seed(2)
    vae = AutoencoderKLLTXVideo(
        latent_channels=32,
        block_out_channels=(16, 16, 32, 32),
        decoder_block_out_channels=(16, 16, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        patch_size=4,
        patch_size_t=1,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return LTXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler
    )


_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'-()<>|_/\n "


def _offline_llama_tokenizer() -> LlamaTokenizer:
    """A character-level BPE Llama tokenizer from an inline vocabulary (no merges): no file, no download."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for piece in [*_CHARACTERS, *(f"\u2581{ch}" for ch in _CHARACTERS.strip())]:
        vocab.setdefault(piece, len(vocab))
    return LlamaTokenizer(vocab=vocab, merges=[], pad_token="<pad>")


def _offline_clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer from an inline vocabulary (no merges)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in [*_CHARACTERS.strip(), *(f"{ch}</w>" for ch in _CHARACTERS.strip())]:
        vocab.setdefault(piece, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[])


def build_hunyuan_tiny() -> DiffusionPipeline:
    """HunyuanVideo's architecture, small: Llama and CLIP text encoders, dual- and single-stream blocks, its VAE."""
    tokenizer, tokenizer_2 = _offline_llama_tokenizer(), _offline_clip_tokenizer()
    torch.manual_seed(0)
    text_encoder = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            # The pipeline reads the hidden states two layers before the last.
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2),
            hidden_size=64,
            intermediate_size=128,
            projection_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    torch.manual_seed(1)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=4,
        attention_head_dim=32,
        num_layers=2,
        num_single_layers=4,
        num_refiner_layers=1,
        text_embed_dim=64,
        pooled_projection_dim=64,
        rope_axes_dim=(8, 12, 12),
    )
    torch.manual_seed(2)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=16, block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8
    )
    return HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


BUILDERS: dict[str, Callable[[], DiffusionPipeline]] = {
    "wan-tiny": build_wan_tiny,
    "ltx-tiny": build_ltx_tiny,
    "hunyuan-tiny": build_hunyuan_tiny,
    "wan2.1-1.3b-random": build_wan_13b_random,
    "wan-i2v-tiny": build_wan_i2v_tiny,
    "wan2.2-ti2v-tiny": build_wan22_ti2v_tiny,
    "wan2.2-t2v-a14b-tiny": build_wan22_t2v_a14b_tiny,
    "wan2.2-i2v-a14b-tiny": build_wan22_i2v_a14b_tiny,
}
# Trained presets: their committed diffusers directories.
TRAINED: dict[str, Path] = {"wan-tiny-trained": Path(__file__).parent / "trained" / "wan-tiny-trained"}
# What clients see of each preset (family, default shape) is in the request contract.
PRESETS: dict[str, PresetInfo] = {name: PRESET_INFO[name] for name in [*BUILDERS, *TRAINED]}


def ensure_preset(name: str, presets_dir: Path) -> Path:
    """The preset's diffusers directory, built and saved first if it is not on disk yet."""
    target = presets_dir / name
    stamp = _stamp(name)
    if _is_current(target, stamp):
        return target
    presets_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename into place, so a crash never leaves half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=presets_dir))
    try:
        if name in TRAINED:
            shutil.copytree(TRAINED[name], staging, dirs_exist_ok=True)
        else:
            BUILDERS[name]().save_pretrained(staging)
        (staging / MARKER).write_text(json.dumps({"preset": name, "format": stamp}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _stamp(name: str) -> int | str:
    """What a current copy's marker holds: the builders' format, or a digest of the committed trained files
    (so that retrained weights replace an older copy)."""
    if name not in TRAINED:
        return PRESET_FORMAT
    digest = hashlib.sha256()
    for file in sorted(path for path in TRAINED[name].rglob("*") if path.is_file()):
        digest.update(file.relative_to(TRAINED[name]).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _is_current(path: Path, stamp: int | str) -> bool:
    try:
        return json.loads((path / MARKER).read_text()).get("format") == stamp
    except (OSError, ValueError):
        return False
