from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from core.video import encode_mp4, to_uint8


def test_mp4_round_trip(tmp_path: Path) -> None:
    # A smooth moving gradient: H.264 at crf 18 keeps it close.
    t, y, x = np.meshgrid(np.arange(9), np.arange(48), np.arange(80), indexing="ij")
    frames = np.stack([(x + 4 * t) / 120, y / 48, np.full_like(x, 0.5, dtype=float)], axis=-1)
    path = tmp_path / "gradient.mp4"
    encode_mp4(to_uint8(frames), path, fps=24)

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == Fraction(24)
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    assert decoded.shape == (9, 48, 80, 3)
    assert np.abs(decoded.astype(int) - to_uint8(frames).astype(int)).mean() < 3
    assert not list(tmp_path.glob(".*partial"))


def test_to_uint8_clips_and_rounds() -> None:
    assert to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0])).tolist() == [0, 0, 128, 255, 255]
