"""Train wan-tiny-trained: its VAE, then its transformer on the VAE's latents, on synthetic clips.

    python -m training.train_wan_tiny [--seed 0] [--threads 1] [--image-steps 600] [--vae-steps 400]
                                      [--clips 1536] [--transformer-steps 3000]
                                      [--out core/models/trained/wan-tiny-trained]
                                      [--report bench/results/wan-tiny-trained.md]

The clips (training.clips) are coloured shapes, still or moving, over plain or textured backgrounds, each
with a caption that says what is where; the preset's own text encoder (random, frozen) encodes the captions.
The VAE starts from a variance-preserving initialisation (PyTorch's default shrinks the signal at every
convolution, and the biases then drown it: from there it learned nothing in hundreds of steps), learns
single frames first (the first frame is encoded alone, so images are cheap), then random 32x32 crops of
9-frame clips; mean squared error and a weak KL term. Its latents of 64x64, 17-frame clips are normalised
per channel by the mean and standard deviation of the posterior's samples (they go into the VAE's config,
where WanPipeline reads them to decode). The transformer learns flow matching as Wan trains: noisy latents
x_t = (1 - s) x_0 + s e at sigmas s drawn as the inference schedule spaces them (uniform, then shifted by the
scheduler's flow shift), timestep 1000 s, target e - x_0; one caption in ten is dropped to the empty prompt
so that classifier-free guidance works. Everything is seeded; the loss curve goes to the report's CSV.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.models.autoencoders.autoencoder_kl_wan import (
    WanAttentionBlock,
    WanCausalConv3d,
    WanResample,
    WanResidualBlock,
)

from core.models.families import family_of
from core.models.presets import wan_tiny_trained_architecture
from training.clips import caption, random_scene, render

SIZE, FRAMES = 64, 17
VAE_CROP = 32
# (frames, batch, peak learning rate) of the VAE's image and clip stages.
IMAGE_STAGE = (1, 8, 2e-3)
CLIP_STAGE = (9, 4, 1e-3)
KL_WEIGHT = 1e-6
CAPTION_DROPOUT = 0.1
TRANSFORMER_LR = 6e-4


@dataclass
class Curve:
    rows: list[tuple[str, int, float, float]]
    started: float

    def add(self, stage: str, step: int, loss: float) -> None:
        self.rows.append((stage, step, loss, time.perf_counter() - self.started))

    def mean(self, stage: str, last: int) -> float:
        losses = [loss for name, _, loss, _ in self.rows if name == stage][-last:]
        return float(np.mean(losses))


def schedule(step: int, total: int, peak: float, warmup: int = 20) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def clip_tensor(video: np.ndarray) -> torch.Tensor:
    """(frames, H, W, 3) in [0, 1] to the VAE's (3, frames, H, W) in [-1, 1]."""
    return torch.from_numpy(video).float().permute(3, 0, 1, 2) * 2 - 1


def prepare_vae(vae: torch.nn.Module) -> None:
    """Convolutions drawn to keep the signal's variance (He, for the SiLU after each RMS norm; PyTorch's default
    shrinks the signal at every convolution and the biases drown it), biases at zero, residual branches and
    attention damped (each block starts near its shortcut), and a narrow posterior (std 0.14, not 1: noise at
    the prior's scale drowns what the latents carry for hundreds of steps). Time starts out of the picture: the
    causal convolutions' taps on past frames at zero and the temporal resampling convolutions copying the
    current frame, so that what the image stage learns holds for every frame of a clip, and the clip stage
    learns motion from there."""
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d | torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            torch.nn.init.zeros_(module.bias)
    with torch.no_grad():
        resampling = [
            module.time_conv
            for module in vae.modules()
            if isinstance(module, WanResample) and module.mode.endswith("3d")
        ]
        for conv in resampling:
            conv.weight.zero_()
            channels = conv.weight.shape[1]
            for half in range(conv.weight.shape[0] // channels):
                conv.weight[half * channels : (half + 1) * channels, :, -1, 0, 0] = torch.eye(channels)
        for module in vae.modules():
            if isinstance(module, WanCausalConv3d) and module.kernel_size[0] > 1 and module not in resampling:
                module.weight[:, :, -1] *= module.kernel_size[0] ** 0.5
                module.weight[:, :, :-1] = 0.0
        for module in vae.modules():
            if isinstance(module, WanResidualBlock):
                module.conv2.weight *= 0.3
            elif isinstance(module, WanAttentionBlock):
                module.proj.weight *= 0.3
        vae.quant_conv.bias[vae.config.z_dim :] = -4.0


def train_vae_stage(
    vae: torch.nn.Module,
    stage: str,
    steps: int,
    settings: tuple[int, int, float],
    rng: np.random.Generator,
    curve: Curve,
) -> None:
    frames, batch_size, peak = settings
    optimizer = torch.optim.Adam(vae.parameters(), lr=peak)
    for step in range(steps):
        batch = []
        for _ in range(batch_size):
            video = render(*random_scene(rng), frames, SIZE, rng)
            top, left = rng.integers(0, SIZE - VAE_CROP + 1, size=2)
            batch.append(clip_tensor(video[:, top : top + VAE_CROP, left : left + VAE_CROP]))
        x = torch.stack(batch)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        loss = torch.nn.functional.mse_loss(recon, x) + KL_WEIGHT * kl
        for group in optimizer.param_groups:
            group["lr"] = schedule(step, steps, peak)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        curve.add(stage, step, loss.item())
        if step % 25 == 0 or step == steps - 1:
            print(f"{stage} {step}/{steps} loss {curve.mean(stage, 25):.4f}", flush=True)


def train_vae(
    pipe: DiffusionPipeline, image_steps: int, clip_steps: int, rng: np.random.Generator, curve: Curve
) -> None:
    vae = pipe.vae.train()
    prepare_vae(vae)
    train_vae_stage(vae, "vae-images", image_steps, IMAGE_STAGE, rng, curve)
    train_vae_stage(vae, "vae-clips", clip_steps, CLIP_STAGE, rng, curve)
    vae.eval().requires_grad_(False)


@torch.no_grad()
def make_dataset(
    pipe: DiffusionPipeline, clips: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised latent means and stds of ``clips`` clips, their caption embeddings, and the empty prompt's."""
    family = family_of(pipe.transformer)
    means, stds, embeddings = [], [], []
    for _ in range(clips):
        items, background = random_scene(rng)
        posterior = pipe.vae.encode(clip_tensor(render(items, background, FRAMES, SIZE, rng))[None]).latent_dist
        means.append(posterior.mean[0])
        stds.append(posterior.std[0])
        encoded = family.encode_prompt(pipe, caption(items, background), "", False, torch.device("cpu"))
        embeddings.append(encoded["prompt_embeds"][0])
    mean, std = torch.stack(means), torch.stack(stds)
    # Statistics of the posterior's samples, not its means: a channel the KL term left at the prior has
    # means near zero and samples of unit variance.
    channel_mean = mean.mean(dim=(0, 2, 3, 4))
    channel_std = (mean.var(dim=(0, 2, 3, 4)) + std.pow(2).mean(dim=(0, 2, 3, 4))).sqrt()
    pipe.vae.register_to_config(latents_mean=channel_mean.tolist(), latents_std=channel_std.tolist())
    view = (1, -1, 1, 1, 1)
    mean = (mean - channel_mean.view(view)) / channel_std.view(view)
    std = std / channel_std.view(view)
    empty = family.encode_prompt(pipe, "", "", False, torch.device("cpu"))["prompt_embeds"][0]
    return mean, std, torch.stack(embeddings), empty


def train_transformer(
    pipe: DiffusionPipeline,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    steps: int,
    batch_size: int,
    generator: torch.Generator,
    curve: Curve,
) -> None:
    mean, std, embeddings, empty = data
    transformer = pipe.transformer.train()
    shift = pipe.scheduler.config.flow_shift
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=TRANSFORMER_LR, weight_decay=0.01)
    for step in range(steps):
        index = torch.randint(0, mean.shape[0], (batch_size,), generator=generator)
        x0 = mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)
        text = embeddings[index].clone()
        text[torch.rand(batch_size, generator=generator) < CAPTION_DROPOUT] = empty
        u = torch.rand(batch_size, generator=generator)
        sigma = shift * u / (1 + (shift - 1) * u)
        noise = torch.randn(x0.shape, generator=generator)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        predicted = transformer(xt, sigma * 1000, text, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(predicted, noise - x0)
        for group in optimizer.param_groups:
            group["lr"] = schedule(step, steps, TRANSFORMER_LR)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        curve.add("transformer", step, loss.item())
        if step % 25 == 0 or step == steps - 1:
            print(f"transformer {step}/{steps} loss {curve.mean('transformer', 25):.4f}", flush=True)
    transformer.eval()


def write_report(report: Path, curve: Curve, args: argparse.Namespace, seconds: dict[str, float], cpu: float) -> None:
    with report.with_suffix(".csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["stage", "step", "loss", "seconds"])
        writer.writerows((stage, step, f"{loss:.5f}", f"{at:.1f}") for stage, step, loss, at in curve.rows)
    lines = [
        "# wan-tiny-trained: training run",
        "",
        "```bash",
        "python -m training.train_wan_tiny " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"Seed {args.seed}, {args.threads} thread(s), {time.strftime('%Y-%m-%d')}. Wall time: VAE "
        f"{seconds['vae']:.0f} s ({args.image_steps} steps on frames, {args.vae_steps} on clips), latents of "
        f"{args.clips} clips {seconds['data']:.0f} s, transformer "
        f"{seconds['transformer']:.0f} s; total {sum(seconds.values()):.0f} s ({cpu:.0f} s of CPU).",
        "",
        "Loss, mean over 25 steps (every step in the CSV beside this file):",
        "",
        "| stage | step | loss |",
        "|---|---|---|",
    ]
    for stage in ("vae-images", "vae-clips", "transformer"):
        losses = [loss for name, _, loss, _ in curve.rows if name == stage]
        marks = sorted({*range(24, len(losses), max(25, len(losses) // 10 // 25 * 25)), len(losses) - 1})
        lines += [f"| {stage} | {mark + 1} | {np.mean(losses[max(0, mark - 24) : mark + 1]):.4f} |" for mark in marks]
    report.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image-steps", type=int, default=600, help="the VAE's, on single frames")
    parser.add_argument("--vae-steps", type=int, default=400, help="the VAE's, on 9-frame clips")
    parser.add_argument("--clips", type=int, default=1536, help="clips encoded for the transformer's training")
    parser.add_argument("--transformer-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16, help="the transformer's")
    parser.add_argument("--out", type=Path, default=Path("core/models/trained/wan-tiny-trained"))
    parser.add_argument("--report", type=Path, default=Path("bench/results/wan-tiny-trained.md"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    pipe = wan_tiny_trained_architecture()
    pipe.text_encoder.requires_grad_(False)
    curve = Curve([], time.perf_counter())
    cpu, seconds = time.process_time(), {}

    started = time.perf_counter()
    train_vae(pipe, args.image_steps, args.vae_steps, rng, curve)
    seconds["vae"] = time.perf_counter() - started
    started = time.perf_counter()
    data = make_dataset(pipe, args.clips, rng)
    seconds["data"] = time.perf_counter() - started
    started = time.perf_counter()
    train_transformer(pipe, data, args.transformer_steps, args.batch_size, generator, curve)
    seconds["transformer"] = time.perf_counter() - started
    cpu = time.process_time() - cpu

    pipe.save_pretrained(args.out)
    write_report(args.report, curve, args, seconds, cpu)
    print(f"saved {args.out}; report {args.report}")


if __name__ == "__main__":
    main()
