"""LoRA adapters end to end on wan-tiny: tiny adapters made here with PEFT (random, nonzero B factors), registered by
an admin upload (POST /admin/loras) or found in SKIPSTEP_LORA_DIR by the worker; jobs that name them run what
diffusers' own load_lora_weights + set_adapters pipeline makes at the same seed, one after another on one worker
without reloading its model, and a job without one runs the base weights exactly. Registration and submit refuse
what does not fit the model, naming the field and the rule, and store nothing."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from service import Service, isolated_service, s3_settings

from core.caching.profiles import ProfileStore
from core.caching.registry import build_cache
from core.contract.frontier import FrontierPoint
from core.contract.loras import adapter_key
from core.contract.request import GenerationRequest, JobRequest
from core.contract.shapes import Shape
from core.db import session_scope
from core.db.migrate import upgrade
from core.generation import generate
from core.jobs import frontier, targets
from core.jobs.expected import expected
from core.models import load_model
from core.models.loading import pipeline_loads
from core.models.lora import AdapterFile, Adapters
from core.models.presets import TRAINED
from core.settings import Settings
from core.video import to_uint8

# Tiny: a job takes well under a second of denoising on two CPU cores.
TINY = {"width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 3, "seed": 7, "fps": 8}
PROMPT = "a red fox running through snow"


def make_lora(transformer_dir: Path, out: Path, seed: int, targets: list[str]) -> Path:
    """A rank-4 LoRA for the transformer in ``transformer_dir``, its B factors random (PEFT starts them at zero,
    which would change nothing), saved in diffusers' format."""
    transformer = WanTransformer3DModel.from_pretrained(transformer_dir)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets), transformer)
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in transformer.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.05
    state = get_peft_model_state_dict(transformer)
    WanPipeline.save_lora_weights(out.parent, transformer_lora_layers=state, weight_name=out.name)
    return out


@pytest.fixture(scope="module")
def lora_files(settings: Settings, wan_tiny: object, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lora-files")
    tiny = settings.presets_dir / "wan-tiny" / "transformer"
    attention = ["to_q", "to_k", "to_v", "to_out.0"]
    return {
        "warm": make_lora(tiny, folder / "warm.safetensors", 1, attention),
        "cool": make_lora(tiny, folder / "cool.safetensors", 2, ["ffn.net.0.proj", "ffn.net.2"]),
        "folded": make_lora(tiny, folder / "folded.safetensors", 3, attention),
        "trained": make_lora(TRAINED["wan-tiny-trained"] / "transformer", folder / "trained.safetensors", 4, attention),
    }


@pytest.fixture(scope="module")
def lora_service(
    settings: Settings, lora_files: dict[str, Path], s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """wan-tiny and wan-tiny-trained with a worker each, on their own database and Redis; SKIPSTEP_LORA_DIR holds
    one adapter for wan-tiny; a worker keeps two adapters loaded."""
    logs = tmp_path_factory.mktemp("lora-logs")
    folder = tmp_path_factory.mktemp("lora-dir")
    (folder / "wan-tiny").mkdir()
    shutil.copy(lora_files["folded"], folder / "wan-tiny" / "folded.safetensors")
    (folder / "wan-tiny" / "broken.safetensors").write_bytes(b"not a safetensors file")
    values = {
        "SKIPSTEP_MODELS": "wan-tiny,wan-tiny-trained",
        "SKIPSTEP_LORA_DIR": str(folder),
        "SKIPSTEP_LORA_CACHE_SIZE": "2",
        **s3_settings(s3_endpoint, "skipstep-loras"),
    }
    with isolated_service(settings, logs, **values) as service:
        service.start_worker("wan-tiny")
        service.start_worker("wan-tiny-trained")
        yield service


def register(service: Service, name: str, model: str, file: Path | bytes, key: str = "admin") -> Any:
    data = file if isinstance(file, bytes) else file.read_bytes()
    with service.client(key) as client:
        return client.post(
            "/admin/loras",
            data={"name": name, "model": model},
            files={"file": ("adapter.safetensors", data, "application/octet-stream")},
        )


def run(service: Service, **fields: Any) -> dict[str, Any]:
    return service.wait(service.submit(prompt=PROMPT, **(TINY | fields))["id"], timeout=300)


def sha256_of(frames: np.ndarray) -> str:
    """The digest a worker reports of its frames (metrics.frames_sha256): of the 8-bit frames."""
    return hashlib.sha256(to_uint8(frames).tobytes()).hexdigest()


def diffusers_frames(settings: Settings, loras: dict[str, tuple[Path, float]]) -> np.ndarray:
    """What diffusers' own pipeline makes with these adapters (name -> file, weight): load_lora_weights, then
    set_adapters."""
    pipe = WanPipeline.from_pretrained(settings.presets_dir / "wan-tiny")
    pipe.set_progress_bar_config(disable=True)
    for name, (file, _) in loras.items():
        pipe.load_lora_weights(str(file), adapter_name=name)
    if loras:
        pipe.set_adapters(list(loras), [weight for _, weight in loras.values()])
    frames = pipe(
        prompt=PROMPT,
        width=TINY["width"],
        height=TINY["height"],
        num_frames=TINY["num_frames"],
        num_inference_steps=TINY["num_inference_steps"],
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(TINY["seed"]),
        output_type="np",
    ).frames[0]
    return np.asarray(frames, dtype=np.float32)


def test_the_engine_runs_what_diffusers_lora_pipeline_runs(settings: Settings, lora_files: dict[str, Path]) -> None:
    """In one process, float frames: each adapter set runs exactly diffusers' frames, the base weights run exactly
    after adapters were loaded, and an adapter is loaded once while it stays among the most recently used."""
    model = load_model("wan-tiny", settings)  # its own: adapters change the transformer's modules
    loads = pipeline_loads()
    digests = {name: hashlib.sha256(file.read_bytes()).hexdigest() for name, file in lora_files.items()}
    model.adapters = Adapters(
        model.pipeline, 2, lambda name: AdapterFile(name, digests[name], lambda: lora_files[name])
    )
    profiles = ProfileStore(settings.profiles_dir)

    def frames(*loras: dict[str, Any]) -> np.ndarray:
        request = GenerationRequest(prompt=PROMPT, **TINY, loras=list(loras))
        return generate(model, request, profiles).frames

    warm, cool, folded = {"name": "warm", "weight": 0.8}, {"name": "cool"}, {"name": "folded", "weight": 0.5}
    base = frames()
    runs = {"warm": frames(warm), "cool": frames(cool), "both": frames(warm, folded)}
    assert np.array_equal(frames(), base)
    assert model.adapters.loads == 3 and list(model.adapters.loaded) == [
        f"warm_{digests['warm'][:12]}",
        f"folded_{digests['folded'][:12]}",
    ]
    assert np.array_equal(runs["warm"], diffusers_frames(settings, {"warm": (lora_files["warm"], 0.8)}))
    assert np.array_equal(runs["cool"], diffusers_frames(settings, {"cool": (lora_files["cool"], 1.0)}))
    both = {"warm": (lora_files["warm"], 0.8), "folded": (lora_files["folded"], 0.5)}
    assert np.array_equal(runs["both"], diffusers_frames(settings, both))
    assert all(not np.array_equal(run, base) for run in runs.values())
    assert np.array_equal(frames(cool), runs["cool"])  # loaded again: it had been unloaded
    assert model.adapters.loads == 4 and pipeline_loads() == loads


def test_jobs_run_their_loras_as_diffusers_does_without_reloading_the_model(
    lora_service: Service, lora_files: dict[str, Path], settings: Settings
) -> None:
    for name in ("warm", "cool"):
        registered = register(lora_service, name, "wan-tiny", lora_files[name])
        assert registered.status_code == 201, registered.text
        assert registered.json()["model"] == "wan-tiny" and registered.json()["rank"] == 4
    with lora_service.client("admin") as client:
        listed = {lora["name"]: lora for lora in client.get("/admin/loras").json()}
    # The folder's adapter was registered by the worker; its broken neighbour was left out.
    assert set(listed) == {"warm", "cool", "folded"} and listed["folded"]["source"] == "folder"

    base = run(lora_service)
    warm = run(lora_service, loras=[{"name": "warm", "weight": 0.8}])
    cool = run(lora_service, loras=[{"name": "cool"}])
    base_again = run(lora_service)
    both = run(lora_service, loras=[{"name": "warm", "weight": 0.8}, {"name": "folded", "weight": 0.5}])

    assert warm["input"]["loras"] == [{"name": "warm", "weight": 0.8}]
    assert [(lora["name"], lora["weight"], lora["loaded"]) for lora in warm["metrics"]["loras"]] == [
        ("warm", 0.8, True)
    ]
    assert cool["metrics"]["loras"][0]["name"] == "cool" and base["metrics"]["loras"] == []
    # One worker, one model load: each adapter was loaded once, beside the model, and kept.
    engines = [job["metrics"]["engine"] for job in (base, warm, cool, base_again, both)]
    assert [engine["pipeline_loads"] for engine in engines] == [1] * 5
    assert [engine["lora_loads"] for engine in engines] == [0, 1, 2, 2, 3]
    assert [(lora["name"], lora["loaded"]) for lora in both["metrics"]["loras"]] == [("warm", False), ("folded", True)]

    # The 8-bit frames as the worker made them, before the MP4 encoding (whose bytes vary from run to run with
    # x264's threads): equal to diffusers' own pipeline's, and the base weights' again once the adapters are off.
    assert len({job["metrics"]["frames_sha256"] for job in (base, warm, cool, both)}) == 4
    assert base_again["metrics"]["frames_sha256"] == base["metrics"]["frames_sha256"]
    assert warm["metrics"]["frames_sha256"] == sha256_of(
        diffusers_frames(settings, {"warm": (lora_files["warm"], 0.8)})
    )
    both_files = {"warm": (lora_files["warm"], 0.8), "folded": (lora_files["folded"], 0.5)}
    assert both["metrics"]["frames_sha256"] == sha256_of(diffusers_frames(settings, both_files))

    # A remix may replace the adapters: none gives the base frames again.
    with lora_service.client() as client:
        remixed = client.post(f"/jobs/{warm['id']}/remix", json={"loras": []})
        swapped = client.post(f"/jobs/{warm['id']}/remix", json={"loras": [{"name": "cool"}]})
    assert remixed.status_code == swapped.status_code == 202, remixed.text
    assert remixed.json()["input"]["loras"] == []
    assert swapped.json()["input"]["loras"] == [{"name": "cool", "weight": 1}]
    assert lora_service.wait(remixed.json()["id"])["metrics"]["frames_sha256"] == base["metrics"]["frames_sha256"]
    assert lora_service.wait(swapped.json()["id"])["metrics"]["loras"][0]["name"] == "cool"


def test_unknown_loras_and_another_models_are_refused_at_submit(
    lora_service: Service, lora_files: dict[str, Path]
) -> None:
    assert register(lora_service, "trained", "wan-tiny-trained", lora_files["trained"]).status_code == 201
    with lora_service.client() as client:
        before = len(client.get("/jobs", params={"limit": 100}).json()["jobs"])
        cases = [
            ([{"name": "nosuch"}], "loras.0.name", "unknown LoRA 'nosuch'"),
            ([{"name": "folded"}, {"name": "trained"}], "loras.1.name", "adapts model wan-tiny-trained, not wan-tiny"),
            ([{"name": n} for n in ("a", "b", "c", "d")], "loras", "at most 3 LoRAs per job"),
            ([{"name": "folded"}, {"name": "folded"}], "loras", "each LoRA at most once"),
            ([{"name": "folded", "weight": 11}], "loras.0.weight", "less than or equal to 10"),
        ]
        for loras, field, rule in cases:
            response = client.post("/jobs", json={"prompt": PROMPT, **TINY, "loras": loras})
            assert response.status_code == 422, response.text
            (error,) = response.json()["error"]["fields"]
            assert error["field"] == field and rule in error["rule"]
        after = len(client.get("/jobs", params={"limit": 100}).json()["jobs"])
    assert after == before


def test_registration_checks_the_file_against_the_models_transformer(
    lora_service: Service, lora_files: dict[str, Path], s3_endpoint: str
) -> None:
    # wan-tiny's adapter does not fit wan-tiny-trained's smaller transformer.
    wrong = register(lora_service, "misfit", "wan-tiny-trained", lora_files["warm"])
    assert wrong.status_code == 422
    (error,) = wrong.json()["error"]["fields"]
    assert error["field"] == "file" and "wan-tiny-trained" in error["rule"]
    junk = register(lora_service, "junk", "wan-tiny", b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    assert junk.status_code == 422 and "holds no tensors" in junk.json()["error"]["fields"][0]["rule"]
    bad = register(lora_service, "no.dots", "nomodel", lora_files["warm"])
    assert bad.status_code == 422
    assert [f["field"] for f in bad.json()["error"]["fields"]] == ["name", "model"]
    assert register(lora_service, "warm2", "wan-tiny", lora_files["warm"], key="alice").status_code == 403
    assert register(lora_service, "folded", "wan-tiny", lora_files["folded"]).status_code == 409

    with lora_service.client("admin") as client:
        names = {lora["name"] for lora in client.get("/admin/loras").json()}
        assert not names & {"misfit", "junk", "no.dots", "warm2"}
        # A deleted LoRA is gone for new jobs, its file from the store.
        assert register(lora_service, "gone", "wan-tiny", lora_files["cool"]).status_code == 201
        assert client.delete("/admin/loras/gone").status_code == 204
        assert client.delete("/admin/loras/gone").status_code == 404
    assert not [key for key in stored(s3_endpoint) if key.startswith("loras/wan-tiny/gone-")]
    with lora_service.client() as client:
        refused = client.post("/jobs", json={"prompt": PROMPT, **TINY, "loras": [{"name": "gone"}]})
    assert refused.status_code == 422


def stored(s3_endpoint: str) -> list[str]:
    s3 = boto3.client(
        "s3", endpoint_url=s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    return [item["Key"] for item in s3.list_objects_v2(Bucket="skipstep-loras").get("Contents", [])]


def test_profiles_and_frontiers_follow_the_adapter_set(wan_tiny: Any, settings: Settings, tmp_path: Path) -> None:
    """A job plans from the profile measured with its adapters (the worker picks the same one), else from the base
    model's with a note; `auto` chooses from the frontier measured with them, else from the base model's, saying so."""
    store = ProfileStore(tmp_path / "profiles")
    shipped = ProfileStore(tmp_path / "none").get("wan-tiny-128x128x17-20steps")
    # Measured with warm at 0.8: every step's residual changes so much that MagCache skips nothing.
    flat = {branch: [0.5] * len(ratios) for branch, ratios in shipped.magcache.items()}
    measured = {"name": "tiny-warm", "loras": [{"name": "warm", "weight": 0.8}], "magcache": flat}
    store.save(shipped.model_copy(update=measured))
    info = wan_tiny.info(store)
    shape = Shape(width=128, height=128, num_frames=17, num_inference_steps=20)
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(database)

    def planned(loras: list[dict[str, Any]]) -> tuple[Any, str]:
        request = JobRequest(prompt=PROMPT, cache={"strategy": "magcache"}, loras=loras, **vars(shape))
        with session_scope(database) as session:
            figures = expected(session, request, shape, "wan-tiny", info, store)
        cache = build_cache(request.cache, wan_tiny.transformer, shape, store, loras=request.loras)
        assert cache.profile is not None and cache.profile.name == figures.profile  # the worker's own pick
        return figures, figures.branches["cond"].schedule

    with_warm, warm_schedule = planned([{"name": "warm", "weight": 0.8}])
    plain, base_schedule = planned([])
    other, other_schedule = planned([{"name": "warm", "weight": 0.5}])
    assert (with_warm.profile, with_warm.note) == ("tiny-warm", None)
    assert (plain.profile, plain.note) == (shipped.name, None)
    assert other.profile == shipped.name and "measured with LoRAs warm:0.5" in other.note
    assert warm_schedule == "C" * 20 and "." in base_schedule and other_schedule == base_schedule

    points = [
        FrontierPoint(
            strategy="magcache",
            params={"threshold": 0.12},
            computed_calls=20,
            total_calls=40,
            speedup=2.0,
            denoise_seconds=1.0,
            baseline_denoise_seconds=2.0,
            psnr=psnr,
            psnr_mean=psnr,
            ssim=0.9,
            ssim_mean=0.9,
            samples=1,
        )
        for psnr in (25.0,)
    ]
    faithful = [points[0].model_copy(update={"psnr": 40.0, "psnr_mean": 40.0})]
    with session_scope(database) as session:
        frontier.save(session, "wan-tiny", shape, 5.0, points)
        frontier.save(session, "wan-tiny", shape, 5.0, faithful, adapter_key([{"name": "warm", "weight": 0.8}]))
    with session_scope(database) as session:
        chosen = {}
        for label, loras in (("warm", [{"name": "warm", "weight": 0.8}]), ("base", []), ("cool", [{"name": "cool"}])):
            request = JobRequest(
                prompt=PROMPT, cache={"strategy": "auto", "target": {"min_psnr": 30}}, loras=loras, **vars(shape)
            )
            chosen[label] = targets.resolve(session, request, shape, "wan-tiny", info)[1]
    assert chosen["warm"].strategy == "magcache" and "LoRAs" not in chosen["warm"].reason
    assert chosen["base"].strategy == chosen["cool"].strategy == "none"  # the base frontier misses the target
    assert "no frontier was measured with LoRAs cool:1" in chosen["cool"].reason
    assert "LoRAs" not in chosen["base"].reason


def test_the_command_line_runs_loras(lora_service: Service, settings: Settings, tmp_path: Path) -> None:
    """`skipstep submit --lora` names one for a job; `skipstep calibrate --lora` records the set in its profile."""
    env = lora_service.env | {"SKIPSTEP_API_KEY": lora_service.keys["alice"]}
    size = ["--width", "32", "--height", "32", "--num-frames", "5"]
    command = [sys.executable, "-m", "core.cli"]
    submit = [*command, "submit", "--prompt", PROMPT, *size, "--steps", "3", "--lora", "folded:0.5", "--wait"]
    submitted = subprocess.run(
        [*submit, "--api-url", lora_service.url], env=env, capture_output=True, text=True, timeout=600
    )
    assert submitted.returncode == 0, submitted.stderr
    job = lora_service.get(re.search(r"job (\S+) queued", submitted.stdout)[1])
    assert [(lora["name"], lora["weight"]) for lora in job["metrics"]["loras"]] == [("folded", 0.5)]

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    calibrate = [*command, "calibrate", "--model", "wan-tiny", *size, "--steps", "6", "--prompts", str(prompts)]
    calibrated = subprocess.run(
        [*calibrate, "--lora", "folded:0.5"], env=env, capture_output=True, text=True, timeout=600
    )
    assert calibrated.returncode == 0, calibrated.stderr
    store = ProfileStore(settings.profiles_dir)
    try:
        profile = store.get("wan-tiny-32x32x5-6steps-folded0.5")
        assert profile.loras == [{"name": "folded", "weight": 0.5}]
    finally:
        (settings.profiles_dir / "wan-tiny-32x32x5-6steps-folded0.5.json").unlink(missing_ok=True)
