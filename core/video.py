"""MP4 (H.264) encoding of generated frames."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] to uint8."""
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def encode_mp4(frames: np.ndarray, path: Path, fps: int, crf: int = 18) -> None:
    """Write uint8 frames (frames, height, width, 3) as H.264 MP4; the file appears only when complete."""
    _, height, width, _ = frames.shape
    staging = path.with_name(f".{path.name}.partial")
    try:
        with av.open(str(staging), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
