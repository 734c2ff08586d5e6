import os
import subprocess
import sys

# Nothing in the suite may reach a model hub: presets build from configs, weights load from disk.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# The suite serves the random wan-tiny unless a test says otherwise; test_embedded and the embedded `skipstep up`
# tests clear SKIPSTEP_* and run the default, wan-tiny-trained.
os.environ.setdefault("SKIPSTEP_MODEL", "wan-tiny")

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from core.caching.profiles import ProfileStore
from core.contract.request import GenerationRequest
from core.contract.shapes import Shape
from core.models import LoadedModel, load_model
from core.settings import Settings

torch.set_num_threads(2)

pytest_plugins = ["service", "faults", "chromium"]


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("skipstep-home")


@pytest.fixture(scope="session")
def settings(home: Path) -> Settings:
    return Settings(home=home, device="cpu")


@pytest.fixture(scope="session")
def wan_tiny(settings: Settings) -> LoadedModel:
    return load_model("wan-tiny", settings)


@pytest.fixture(scope="session")
def ltx_tiny(settings: Settings) -> LoadedModel:
    return load_model("ltx-tiny", settings)


@pytest.fixture(scope="session")
def hunyuan_tiny(settings: Settings) -> LoadedModel:
    return load_model("hunyuan-tiny", settings)


@pytest.fixture
def profiles(settings: Settings) -> ProfileStore:
    return ProfileStore(settings.profiles_dir)


SMALL = {
    "wan": Shape(width=64, height=64, num_frames=9, num_inference_steps=10),
    "ltx": Shape(width=64, height=64, num_frames=17, num_inference_steps=10),
    "hunyuan": Shape(width=64, height=64, num_frames=9, num_inference_steps=10),
}


@pytest.fixture
def small_request() -> Callable[..., GenerationRequest]:
    """A quick request for a model family, with overrides."""

    def make(family: str = "wan", **overrides: object) -> GenerationRequest:
        shape = SMALL[family]
        fields = {
            "prompt": "a red fox running through snow",
            "width": shape.width,
            "height": shape.height,
            "num_frames": shape.num_frames,
            "num_inference_steps": shape.num_inference_steps,
            "seed": 7,
        }
        return GenerationRequest(**(fields | overrides))

    return make


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess]:
    """Runs the skipstep command line in a fresh process with its own home."""

    def invoke(home: Path, *args: str) -> subprocess.CompletedProcess:
        env = os.environ | {"SKIPSTEP_HOME": str(home), "SKIPSTEP_DEVICE": "cpu"}
        command = [sys.executable, "-m", "core.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)

    return invoke
