"""wan-tiny-trained is trained: what a caption says shows up in the decoded frames, where it says, in an uncached
run; the random wan-tiny's frames show no such thing."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from core.caching.profiles import ProfileStore
from core.contract.request import GenerationRequest
from core.generation import generate
from core.models import LoadedModel, load_model
from core.models.presets import MARKER, TRAINED
from core.settings import Settings

# How much of a colour a pixel shows: that channel mix against the others.
COLOURS = {
    "red": (1.0, -0.5, -0.5),
    "green": (-0.5, 1.0, -0.5),
    "blue": (-0.5, -0.5, 1.0),
    "yellow": (0.5, 0.5, -1.0),
}
MARGIN = 0.05
# (prompt, the shape's colour, where it is, the opposite third)
CAPTIONS = (
    ("a red square on the left on a black background", "red", "left", "right"),
    ("a blue circle at the top on a black background", "blue", "top", "bottom"),
    ("a yellow square on the right on a gray background", "yellow", "right", "left"),
    ("a green circle at the bottom on a black background", "green", "bottom", "top"),
)


def third(frames: np.ndarray, where: str) -> np.ndarray:
    """The pixels of one third of every frame: (frames, h, w, 3) -> (n, 3)."""
    size = frames.shape[1] // 3
    part = {
        "left": frames[:, :, :size],
        "right": frames[:, :, -size:],
        "top": frames[:, :size],
        "bottom": frames[:, -size:],
    }[where]
    return part.reshape(-1, 3)


def colour_in(pixels: np.ndarray, colour: str) -> float:
    """The mean amount of a caption colour in some pixels."""
    return float((pixels @ np.asarray(COLOURS[colour])).mean())


def shows_captions(model: LoadedModel, profiles: ProfileStore, **shape: int) -> list[bool]:
    """Per caption: is the caption's colour clearly stronger in the third of the frames where the caption puts
    the shape than in the opposite third?"""
    shown = []
    for prompt, colour, where, opposite in CAPTIONS:
        frames = generate(model, GenerationRequest(prompt=prompt, seed=3, **shape), profiles).frames
        shown.append(colour_in(third(frames, where), colour) > colour_in(third(frames, opposite), colour) + MARGIN)
    return shown


@pytest.fixture(scope="module")
def trained(settings: Settings) -> LoadedModel:
    return load_model("wan-tiny-trained", settings)


def test_trained_preset_loads_its_committed_weights_through_from_pretrained(trained, settings: Settings) -> None:
    path = settings.presets_dir / "wan-tiny-trained"
    assert trained.path == path
    assert json.loads((path / MARKER).read_text())["preset"] == "wan-tiny-trained"
    committed = load_file(TRAINED["wan-tiny-trained"] / "transformer" / "diffusion_pytorch_model.safetensors")
    loaded = trained.transformer.state_dict()
    assert committed.keys() == loaded.keys()
    assert all(np.array_equal(committed[key].numpy(), loaded[key].numpy()) for key in committed)
    assert (trained.default_shape.width, trained.default_shape.height) == (64, 64)
