"""Synthetic clips for the tiny trained model: coloured shapes, still or moving, over plain or textured
backgrounds, each with a caption from a small vocabulary that says what is where."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "white": (0.95, 0.95, 0.95),
}
SHAPES = ("square", "circle", "triangle")
BACKGROUNDS = ("black", "gray", "striped", "checkered")
# Where a shape is for the whole clip (centre, as fractions of width and height), or how it moves.
PLACES = {
    "at the top": (0.5, 0.22),
    "at the bottom": (0.5, 0.78),
    "on the left": (0.22, 0.5),
    "on the right": (0.78, 0.5),
    "in the center": (0.5, 0.5),
}
MOTIONS = {
    "moving left": (-1.0, 0.0),
    "moving right": (1.0, 0.0),
    "moving up": (0.0, -1.0),
    "moving down": (0.0, 1.0),
}


@dataclass(frozen=True)
class Item:
    colour: str
    shape: str
    where: str  # a key of PLACES or MOTIONS


def caption(items: list[Item], background: str) -> str:
    things = " and ".join(f"a {item.colour} {item.shape} {item.where}" for item in items)
    return f"{things} on a {background} background"


def random_scene(rng: np.random.Generator) -> tuple[list[Item], str]:
    count = 1 if rng.random() < 0.7 else 2
    wheres = rng.choice(list(PLACES) + list(MOTIONS), size=count, replace=False)
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    items = [
        Item(str(colour), str(rng.choice(SHAPES)), str(where)) for colour, where in zip(colours, wheres, strict=True)
    ]
    return items, str(rng.choice(BACKGROUNDS))


def _background(kind: str, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    shade = rng.uniform(0.85, 1.15)
    if kind == "black":
        image = np.full((size, size), 0.05)
    elif kind == "gray":
        image = np.full((size, size), 0.45 * shade)
    elif kind == "striped":
        image = np.where((yy // 8) % 2 == 0, 0.15, 0.38) * shade
    else:
        image = np.where(((yy // 8) + (xx // 8)) % 2 == 0, 0.15, 0.38) * shade
    return np.broadcast_to(image[None, :, :, None], (frames, size, size, 3)).copy()


def _mask(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = xx - cx, yy - cy
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)


def render(items: list[Item], background: str, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The clip as (frames, size, size, 3) floats in [0, 1]."""
    video = _background(background, frames, size, rng)
    for item in items:
        r = size * rng.uniform(0.13, 0.18)
        jitter = rng.uniform(-0.06, 0.06, size=2) * size
        if item.where in PLACES:
            fx, fy = PLACES[item.where]
            path = [(fx * size + jitter[0], fy * size + jitter[1])] * frames
        else:
            vx, vy = MOTIONS[item.where]
            across = np.linspace(-0.3, 0.3, frames) * size
            centre = size / 2 + jitter
            path = [(centre[0] + vx * step, centre[1] + vy * step) for step in across]
        colour = np.asarray(COLOURS[item.colour]) * rng.uniform(0.9, 1.0)
        for index, (cx, cy) in enumerate(path):
            video[index][_mask(item.shape, size, cx, cy, r)] = colour
    return np.clip(video, 0.0, 1.0)
