import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.caching.profiles import Profile, ProfileStore
from core.calibration import calibrate, fit_polynomial
from core.contract.request import GenerationRequest
from core.contract.shapes import Shape
from core.errors import CacheConfigError, InvalidRequest
from core.generation import generate

SHAPE = Shape(width=64, height=64, num_frames=9, num_inference_steps=8)


def test_calibrate_cli_round_trip_drives_magcache(cli, settings, tmp_path: Path, wan_tiny, small_request) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a boat on a river\n\n")
    # A home of its own, so the new profile is not the nearest for other tests; the built preset is shared.
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(settings.presets_dir)
    profiles = ProfileStore(home / "profiles")
    result = cli(
        home,
        "calibrate",
        "--model",
        "wan-tiny",
        "--width",
        "64",
        "--height",
        "64",
        "--num-frames",
        "9",
        "--steps",
        "8",
        "--prompts",
        str(prompts),
        "--name",
        "round-trip",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote profile round-trip" in result.stdout
    profile = profiles.get("round-trip")
    assert profile.prompts == ["a boat on a river"]
    assert (profile.width, profile.height, profile.num_frames, profile.num_inference_steps) == (64, 64, 9, 8)
    ratios = profile.magcache

    # The recorded ratios are the block-stack residual magnitudes of an uncached run, measured here on our own.
    stack_in, stack_out = [], []
    blocks = wan_tiny.transformer.blocks
    handles = [
        blocks[0].register_forward_pre_hook(lambda _m, args: stack_in.append(args[0].clone())),
        blocks[-1].register_forward_hook(lambda _m, _a, out: stack_out.append(out.clone())),
    ]
    try:
        generate(
            wan_tiny,
            GenerationRequest(
                prompt="a boat on a river", width=64, height=64, num_frames=9, num_inference_steps=8, seed=0
            ),
            profiles,
        )
    finally:
        for handle in handles:
            handle.remove()
    norms = [torch.linalg.vector_norm(o - i, dim=-1) for i, o in zip(stack_in, stack_out, strict=True)]
    for parity, branch in enumerate(("cond", "uncond")):
        own = norms[parity::2]
        expected = [1.0] + [(own[t] / own[t - 1]).mean().item() for t in range(1, 8)]
        assert ratios[branch] == pytest.approx(expected, rel=1e-5)

    # MagCache with that profile follows the reference rule on exactly those ratios, per branch.
    threshold, k = 0.05, 2
    request = small_request(
        num_inference_steps=8,
        cache={
            "strategy": "magcache",
            "profile": "round-trip",
            "params": {"threshold": threshold, "max_skip_steps": k, "retention_ratio": 0.25},
        },
    )
    report = generate(wan_tiny, request, profiles).cache
    for parity, branch in enumerate(("cond", "uncond")):
        ratio, error, skips, schedule = 1.0, 0.0, 0, ""
        for step in range(8):
            if 2 * step + parity < int(2 * 8 * 0.25):
                schedule += "C"
                continue
            ratio *= ratios[branch][step]
            skips += 1
            error += abs(1 - ratio)
            if error < threshold and skips <= k:
                schedule += "."
            else:
                schedule += "C"
                ratio, error, skips = 1.0, 0.0, 0
        assert report.branches[branch].schedule == schedule
    assert report.profile == "round-trip"


def test_teacache_polynomial_is_fitted_to_the_recorded_pairs(wan_tiny, profiles) -> None:
    profile = calibrate(wan_tiny, SHAPE, ["a cat", "a dog"], name="fit")
    for compared in ("temb", "timestep_proj"):
        pairs = profile.teacache_samples[compared]
        assert len(pairs) == 2 * 2 * 7  # prompts x branches x consecutive-step pairs
        x, y = np.array(pairs).T
        assert np.all(x > 0) and np.all(y > 0)
        fitted = np.polyval(profile.teacache[compared], x)
        assert np.sum((fitted - y) ** 2) <= np.sum((np.polyval(np.polyfit(x, y, 1), x) - y) ** 2)
    # The input changes are those of the embeddings the transformer computes while it denoises (recorded here
    # from its own forward calls), the same for every prompt and branch: on Wan they depend on the timestep alone.
    recorded: dict[str, list[torch.Tensor]] = {"temb": [], "timestep_proj": []}

    def record(_module: torch.nn.Module, _args: object, output: tuple[torch.Tensor, ...]) -> None:
        recorded["temb"].append(output[0][:1].detach().float())
        recorded["timestep_proj"].append(output[1][:1].detach().float())

    handle = wan_tiny.transformer.condition_embedder.register_forward_hook(record)
    try:
        generate(wan_tiny, GenerationRequest(prompt="a cat", **asdict(SHAPE)), profiles)
    finally:
        handle.remove()
    for compared, outputs in recorded.items():
        per_step = torch.cat(outputs[::2]).flatten(1)  # the cond call of each step (uncond is the second)
        changes = ((per_step[1:] - per_step[:-1]).abs().mean(1) / per_step[:-1].abs().mean(1)).tolist()
        assert len(changes) == 7
        for series in range(4):  # 2 prompts x 2 branches
            inputs = [x for x, _ in profile.teacache_samples[compared][7 * series : 7 * (series + 1)]]
            assert inputs == pytest.approx(changes, rel=1e-4), (compared, series)


def test_fit_polynomial_recovers_a_known_polynomial() -> None:
    truth = [3.0, -2.0, 0.5, 1.5, 0.01]
    x = np.linspace(0.01, 0.3, 20)
    assert fit_polynomial(list(zip(x, np.polyval(truth, x), strict=True))) == pytest.approx(truth, rel=1e-6, abs=1e-9)


def test_calibration_needs_enough_steps(wan_tiny) -> None:
    with pytest.raises(InvalidRequest, match="num_inference_steps: calibration needs at least 6 steps"):
        calibrate(wan_tiny, Shape(64, 64, 9, 5), ["a cat"])


def _profile(name: str, steps: int, width: int = 64, **fields: object) -> Profile:
    return Profile(
        name=name,
        model="wan-tiny",
        transformer={"class": "WanTransformer3DModel", "num_layers": 8},
        width=width,
        height=64,
        num_frames=9,
        num_inference_steps=steps,
        guidance_scale=5.0,
        source="test",
        magcache={"cond": [1.0] * steps},
        **fields,
    )


def test_nearest_profile_prefers_step_count_then_size(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path)
    for profile in (_profile("s10", 10), _profile("s30", 30), _profile("s30-wide", 30, width=512)):
        store.save(profile)
    signature = {"class": "WanTransformer3DModel", "num_layers": 8, "ffn_dim": 2048}
    assert store.nearest(signature, Shape(64, 64, 9, 12), "magcache").name == "s10"
    assert store.nearest(signature, Shape(64, 64, 9, 25), "magcache").name == "s30"
    assert store.nearest(signature, Shape(480, 64, 9, 30), "magcache").name == "s30-wide"
    assert store.nearest(signature, Shape(64, 64, 9, 30), "teacache") is None
    assert store.nearest({"class": "WanTransformer3DModel", "num_layers": 30}, Shape(64, 64, 9, 30), "magcache") is None


def test_builtin_profile_names_are_reserved(tmp_path: Path) -> None:
    with pytest.raises(CacheConfigError, match="taken by a built-in profile"):
        ProfileStore(tmp_path).save(_profile("wan2.1-t2v-1.3b", 50))


def test_cli_refuses_a_taken_profile_name_before_calibrating(cli, home: Path) -> None:
    result = cli(home, "calibrate", "--model", "wan-tiny", "--name", "wan2.1-t2v-1.3b")
    assert result.returncode == 2
    assert "error: profile name 'wan2.1-t2v-1.3b' is taken by a built-in profile" in result.stderr
    assert "[1/3]" not in result.stderr


def test_unreadable_profile_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(CacheConfigError, match=re.escape(f"profile file {tmp_path / 'broken.json'} is unreadable")):
        ProfileStore(tmp_path).all()


def test_an_image_to_video_model_is_calibrated_and_run_from_a_first_frame(cli, settings, tmp_path: Path) -> None:
    """`calibrate` and `generate` take an image-to-video model's first frame (--image), checked and fitted to the
    video's size as a job's is; without one they say what is missing before any run."""
    home = tmp_path / "home"
    home.mkdir()
    settings.presets_dir.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(settings.presets_dir)  # the built preset is shared with the session's tests
    frame = tmp_path / "frame.png"
    Image.new("RGB", (96, 64), (40, 90, 160)).save(frame)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a boat on a river\n")
    shape = ["--width", "64", "--height", "64", "--num-frames", "9", "--steps", "8", "--prompts", str(prompts)]

    refused = cli(home, "calibrate", "--model", "wan-i2v-tiny", *shape)
    assert refused.returncode == 2
    assert "image: model wan-i2v-tiny generates from an image: give the first frame (--image)" in refused.stderr
    assert "[1/" not in refused.stderr  # refused before the first prompt ran

    made = cli(home, "calibrate", "--model", "wan-i2v-tiny", *shape, "--image", str(frame), "--name", "i2v-frame")
    assert made.returncode == 0, made.stderr
    profile = ProfileStore(home / "profiles").get("i2v-frame")
    assert {branch: len(ratios) for branch, ratios in profile.magcache.items()} == {"cond": 8, "uncond": 8}
    assert profile.source.endswith("from a first frame")

    video = tmp_path / "boat.mp4"
    ran = cli(
        home, "generate", "--model", "wan-i2v-tiny", "--prompt", "a boat", *shape[:8], "--cache", "magcache",
        "--profile", "i2v-frame", "--image", str(frame), "--out", str(video),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    computed = [int(n) for n in re.findall(r"^\s+(?:cond|uncond)\s+[C.]{8}\s+(\d)/8$", ran.stdout, re.MULTILINE)]
    assert len(computed) == 2 and sum(computed) < 16, ran.stdout  # MagCache reused steps on the profile's ratios
    assert video.stat().st_size > 0
