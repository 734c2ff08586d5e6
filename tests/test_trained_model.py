"""wan-tiny-trained is trained: the colour a caption names shows up in the decoded frames of an uncached run; the
random wan-tiny's frames show no such thing."""

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
# (prompt, the shape's colour)
CAPTIONS = (
    ("a red square on the left on a black background", "red"),
    ("a blue circle at the top on a black background", "blue"),
    ("a yellow square on the right on a gray background", "yellow"),
    ("a green circle at the bottom on a black background", "green"),
)


def colour_in(pixels: np.ndarray, colour: str) -> float:
    """The mean amount of a caption colour in some pixels."""
    return float((pixels @ np.asarray(COLOURS[colour])).mean())


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


def dominant_colours(model: LoadedModel, profiles: ProfileStore, seeds: tuple[int, ...]) -> list[tuple[str, str]]:
    """Per caption and seed: (the caption's colour, the caption colour the decoded frames show most of)."""
    found = []
    for seed in seeds:
        for prompt, colour in CAPTIONS:
            request = GenerationRequest(
                prompt=prompt, seed=seed, width=64, height=64, num_frames=9, num_inference_steps=10
            )
            pixels = generate(model, request, profiles).frames.reshape(-1, 3)
            amounts = {name: colour_in(pixels, name) for name in COLOURS}
            found.append((colour, max(amounts, key=amounts.__getitem__)))
    return found


def test_the_captions_colour_shows_in_the_trained_models_frames(trained, settings: Settings) -> None:
    """The colour a caption names is the one its frames show most of, for at least 7 of 8 caption/seed pairs (20 of
    20 over seeds 0-4 when the weights were committed); the random wan-tiny shows the same colour whatever the
    caption. (Where the shape is placed is not learned reliably: bench/results/wan-tiny-trained.md.)"""
    profiles = ProfileStore(settings.profiles_dir)
    trained_shows = dominant_colours(trained, profiles, seeds=(0, 3))
    assert sum(asked == shown for asked, shown in trained_shows) >= 7, trained_shows
    random_shows = dominant_colours(load_model("wan-tiny", settings), profiles, seeds=(3,))
    assert len({shown for _, shown in random_shows}) == 1, random_shows
