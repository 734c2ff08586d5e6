"""Input images: the rules checked at submit, each refusal naming ``image`` and the rule."""

import io

import pytest
from PIL import Image

from core.contract.shapes import Shape
from core.errors import InvalidRequest
from core.images import check_image, open_checked
from core.jobs.service import check_image_url
from core.settings import Settings

SHAPE = Shape(width=64, height=48, num_frames=9, num_inference_steps=4)
LIMITS = {"max_bytes": 1024 * 1024, "max_pixels": 2048 * 2048}


def encoded(size: tuple[int, int], format: str, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=format)
    return out.getvalue()


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_are_fitted_to_the_job(format) -> None:
    fitted = open_checked(check_image(encoded((200, 100), format), SHAPE, **LIMITS))
    assert fitted.size == (64, 48)
    red, green, _ = fitted.getpixel((32, 24))
    assert red > 150 and green < 80


def refusal(data: bytes, **limits: int) -> str:
    with pytest.raises(InvalidRequest) as error:
        check_image(data, SHAPE, **(LIMITS | limits))
    [(field, rule)] = error.value.problems
    assert field == "image"
    return rule


def test_wrong_type_is_refused() -> None:
    assert "PNG, JPEG or WebP" in refusal(encoded((64, 48), "GIF"))
    assert "PNG, JPEG or WebP" in refusal(b"%PDF-1.7 not an image at all")


def test_truncated_image_is_refused() -> None:
    data = encoded((256, 192), "PNG", (10, 200, 90))
    noisy = Image.effect_noise((256, 192), 60).convert("RGB")
    out = io.BytesIO()
    noisy.save(out, format="PNG")
    data = out.getvalue()
    assert "truncated or corrupt" in refusal(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # 3000 x 3000 of one colour: a few kilobytes that would inflate to 27 MB.
    bomb = encoded((3000, 3000), "PNG", (0, 0, 0))
    assert len(bomb) < 100_000
    assert "decompression bomb" in refusal(bomb)


def test_too_many_bytes_is_refused() -> None:
    assert "at most 2048 bytes" in refusal(encoded((64, 48), "PNG") + b"\0" * 4096, max_bytes=2048)


def test_aspect_ratio_too_far_from_the_job_is_refused() -> None:
    assert "aspect ratio" in refusal(encoded((400, 60), "PNG"))


def test_image_url_to_a_private_address_is_refused() -> None:
    strict = Settings(webhook_allow_private=False)
    for url, rule in (
        ("https://127.0.0.1/frame.png", "public address"),
        ("https://10.1.2.3/frame.png", "public address"),
        ("http://example.com/frame.png", "must be https"),
    ):
        with pytest.raises(InvalidRequest) as error:
            check_image_url(url, strict)
        [(field, broken)] = error.value.problems
        assert field == "image" and rule in broken, broken
