"""Video shapes and each model family's size rules, known without loading a model."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Shape:
    width: int
    height: int
    num_frames: int
    num_inference_steps: int


# A request's size fields, as Shape names them.
SIZE_FIELDS: tuple[str, ...] = tuple(field.name for field in fields(Shape))


@dataclass(frozen=True)
class FamilyRules:
    """What a family's VAE and patching allow: width and height are multiples of ``spatial_multiple``
    (VAE downsampling x patch size), and ``num_frames % temporal_multiple == 1``."""

    name: str
    # The diffusers transformer class that identifies the family in a model directory's config.
    transformer_class: str
    spatial_multiple: int
    temporal_multiple: int
    default_shape: Shape
    # Cache-context names of the transformer calls of one step with classifier-free guidance, in call order.
    cfg_branches: tuple[str, ...] = ("cond", "uncond")
    # The transformer config's block counts, summed: every block the cached unit can span.
    block_count_keys: tuple[str, ...] = ("num_layers",)
    # Where one transformer class serves VAEs of different compression: the latent channels (the transformer's
    # ``out_channels``, the VAE's ``z_dim``) that tell this family's VAE; None: any.
    latent_channels: int | None = None

    def block_count(self, transformer_config: dict) -> int | None:
        """How many blocks the transformer has, from its config; None if the config does not say."""
        if not all(key in transformer_config for key in self.block_count_keys):
            return None
        return sum(transformer_config[key] for key in self.block_count_keys)

    def branches(self, do_cfg: bool) -> tuple[str, ...]:
        return self.cfg_branches if do_cfg else ("cond",)

    def violations(self, shape: Shape) -> list[tuple[str, str]]:
        """(field, rule) for every size rule ``shape`` breaks."""
        problems = [
            (field, f"must be a multiple of {self.spatial_multiple} for {self.name} models")
            for field in ("width", "height")
            if getattr(shape, field) % self.spatial_multiple
        ]
        if shape.num_frames % self.temporal_multiple != 1:
            examples = ", ".join(str(self.temporal_multiple * k + 1) for k in (2, 4, 8))
            problems.append(
                ("num_frames", f"must be {self.temporal_multiple}k+1 (e.g. {examples}) for {self.name} models")
            )
        return problems


WAN = FamilyRules(
    name="wan",
    transformer_class="WanTransformer3DModel",
    spatial_multiple=16,
    temporal_multiple=4,
    default_shape=Shape(width=832, height=480, num_frames=81, num_inference_steps=50),
)
# Wan2.2 TI2V-5B: Wan2.2's VAE compresses 16x spatially (48 latent channels), with 2x2 patches: multiples of 32.
WAN22 = FamilyRules(
    name="wan2.2",
    transformer_class="WanTransformer3DModel",
    spatial_multiple=32,
    temporal_multiple=4,
    default_shape=Shape(width=1280, height=704, num_frames=121, num_inference_steps=50),
    latent_channels=48,
)
LTX = FamilyRules(
    name="ltx",
    transformer_class="LTXVideoTransformer3DModel",
    spatial_multiple=32,
    temporal_multiple=8,
    default_shape=Shape(width=704, height=480, num_frames=161, num_inference_steps=50),
    # LTXPipeline runs CFG as one batched call: both branches share a cache context.
    cfg_branches=("cond_uncond",),
)

# HunyuanVideo: VAE 8x spatial, 4x temporal, 2x2 patches; native 720p, 129 frames (5 s at 24 fps).
HUNYUAN = FamilyRules(
    name="hunyuan",
    transformer_class="HunyuanVideoTransformer3DModel",
    spatial_multiple=16,
    temporal_multiple=4,
    default_shape=Shape(width=1280, height=720, num_frames=129, num_inference_steps=50),
    # Embedded guidance (a transformer input): HunyuanVideoPipeline makes one call per step.
    cfg_branches=("cond",),
    # Dual-stream blocks, then single-stream ones.
    block_count_keys=("num_layers", "num_single_layers"),
)

FAMILIES: dict[str, FamilyRules] = {rules.name: rules for rules in (WAN, WAN22, LTX, HUNYUAN)}


def family_for_transformer(class_name: str, config: dict | None = None) -> FamilyRules:
    """The family of a transformer class and its config (the latent channels tell Wan2.2's VAE from Wan2.1's)."""
    candidates = [rules for rules in FAMILIES.values() if rules.transformer_class == class_name]
    out_channels = (config or {}).get("out_channels")
    for rules in sorted(candidates, key=lambda rules: rules.latent_channels is None):
        if rules.latent_channels is None or rules.latent_channels == out_channels:
            return rules
    known = ", ".join(sorted(rules.transformer_class for rules in FAMILIES.values()))
    raise ValueError(f"unsupported transformer {class_name}; supported: {known}")
