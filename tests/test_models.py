import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import WanPipeline

from core.caching.profiles import ProfileStore, transformer_signature
from core.errors import ModelLoadError
from core.models import load_model, load_pipeline
from core.models.presets import MARKER, build_wan_13b_random, build_wan_tiny
from core.settings import Settings


def test_wan_tiny_is_built_saved_and_loaded_through_from_pretrained(wan_tiny, settings: Settings) -> None:
    path = settings.presets_dir / "wan-tiny"
    assert wan_tiny.path == path
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    for component in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (path / component).is_dir(), component
    assert isinstance(wan_tiny.pipeline, WanPipeline)
    assert wan_tiny.pipeline.transformer.dtype == torch.float32

    # What was loaded is what the builder made, weight for weight.
    built = build_wan_tiny().transformer.state_dict()
    loaded = wan_tiny.transformer.state_dict()
    assert built.keys() == loaded.keys()
    assert all(torch.equal(built[key], loaded[key]) for key in built)


def test_preset_is_built_once(wan_tiny, settings: Settings) -> None:
    marker = settings.presets_dir / "wan-tiny" / MARKER
    before = marker.stat().st_mtime_ns
    again = load_model("wan-tiny", settings)
    assert marker.stat().st_mtime_ns == before
    assert again.path == wan_tiny.path


def test_missing_model_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match=re.escape(f"model directory {missing} does not exist")):
        load_pipeline(missing, torch.device("cpu"))


@pytest.fixture
def model_copy(wan_tiny, tmp_path: Path) -> Path:
    copy = tmp_path / "wan-copy"
    shutil.copytree(wan_tiny.path, copy)
    return copy


def test_directory_without_model_index(model_copy: Path) -> None:
    (model_copy / "model_index.json").unlink()
    with pytest.raises(ModelLoadError, match=r"has no model_index\.json"):
        load_pipeline(model_copy, torch.device("cpu"))


def test_missing_component_is_named(model_copy: Path) -> None:
    shutil.rmtree(model_copy / "vae")
    with pytest.raises(ModelLoadError, match=r"is incomplete: vae/ is missing"):
        load_pipeline(model_copy, torch.device("cpu"))


def test_missing_weights_are_named(model_copy: Path) -> None:
    for weights in (model_copy / "transformer").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelLoadError, match=r"transformer/ has no weights"):
        load_pipeline(model_copy, torch.device("cpu"))


def test_corrupt_weights_are_a_load_error_naming_the_directory(model_copy: Path) -> None:
    weights = next((model_copy / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=re.escape(f"model directory {model_copy} could not be loaded")):
        load_pipeline(model_copy, torch.device("cpu"))


def test_corrupt_model_index(model_copy: Path) -> None:
    (model_copy / "model_index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="is not valid JSON"):
        load_pipeline(model_copy, torch.device("cpu"))


def test_full_size_preset_has_the_shapes_of_the_published_profile(tmp_path: Path) -> None:
    with init_empty_weights():
        pipeline = build_wan_13b_random()
    params = sum(p.numel() for p in pipeline.transformer.parameters())
    assert 1.41e9 < params < 1.43e9  # Wan2.1-T2V-1.3B
    published = ProfileStore(tmp_path).get("wan2.1-t2v-1.3b")
    assert published.matches(transformer_signature(pipeline.transformer))


def hub_cache_with(model_dir: Path, hf_home: Path, repo_id: str) -> Path:
    """A Hugging Face cache as the hub client lays it out: models--owner--name/snapshots/<commit>/ and
    refs/main naming the commit."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "4f2a9c0d1e3b5a7c9e1f2a3b4c5d6e7f8a9b0c1d"
    shutil.copytree(model_dir, repo / "snapshots" / commit, ignore=shutil.ignore_patterns(MARKER))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo


def test_hub_id_loads_from_the_hugging_face_cache_offline(wan_tiny, tmp_path: Path, cli, monkeypatch) -> None:
    hub_cache_with(wan_tiny.path, tmp_path / "hf", "acme/tiny-wan")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hub.mp4"
    shape = ("--width", "64", "--height", "64", "--num-frames", "9", "--steps", "2")
    result = cli(tmp_path / "home", "generate", "--prompt", "x", "--model", "acme/tiny-wan", *shape, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0


def test_hub_id_missing_offline_says_how_to_fetch_it(tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli(tmp_path / "home", "generate", "--prompt", "x", "--model", "acme/not-cached", "--out", "x.mp4")
    assert result.returncode == 2
    assert "model acme/not-cached is not in the Hugging Face cache" in result.stderr
    assert "huggingface-cli download acme/not-cached" in result.stderr
