"""Input images (a job's first frame): checked before anything is stored, and fitted to the job's shape.

Rules, each a 422 naming ``image``: PNG, JPEG or WebP only (by content, not by name); at most
``image_max_bytes``; at most ``image_max_pixels``, read from the header before any decoding, so a
decompression bomb is refused without inflating it; decoded whole (a truncated or corrupt file is refused);
an aspect ratio within ``MAX_ASPECT_CHANGE`` of the job's. The image is then scaled to cover the job's width and
height and centre-cropped to them, as Wan's image-to-video pipelines expect the first frame at the video's size,
and kept as PNG: what the worker reads is exactly what was checked.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import httpx
from PIL import Image, UnidentifiedImageError

from core.contract.shapes import Shape
from core.errors import InvalidRequest
from core.webhooks.addresses import UnresolvableHost, UnsafeWebhookURL, resolve_target

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# How far the image's aspect ratio may be from the job's before cropping would lose too much of it.
MAX_ASPECT_CHANGE = 2.0
FETCH_TIMEOUT_SECONDS = 20.0


def check_image(data: bytes, shape: Shape, max_bytes: int, max_pixels: int) -> bytes:
    """The first frame as PNG at the job's size; InvalidRequest("image", rule) for a file breaking a rule."""
    if len(data) > max_bytes:
        raise InvalidRequest("image", f"must be at most {max_bytes} bytes (got {len(data)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidRequest(
                    "image", f"decompression bomb refused: {width}x{height} is more than {max_pixels} pixels"
                )
            image.load()
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest("image", "must be a PNG, JPEG or WebP image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidRequest("image", f"is truncated or corrupt: {exc}") from None
    job_ratio, ratio = shape.width / shape.height, width / height
    if max(ratio / job_ratio, job_ratio / ratio) > MAX_ASPECT_CHANGE:
        raise InvalidRequest(
            "image",
            f"aspect ratio {width}x{height} is too far from the job's {shape.width}x{shape.height} "
            f"(at most {MAX_ASPECT_CHANGE:g}x wider or taller)",
        )
    fitted = fit(image.convert("RGB"), shape.width, shape.height)
    out = io.BytesIO()
    fitted.save(out, format="PNG")
    return out.getvalue()


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scaled to cover ``width`` x ``height`` and centre-cropped to it."""
    scale = max(width / image.width, height / image.height)
    scaled = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.LANCZOS
    )
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def read_first_frame(path: Path, shape: Shape, max_bytes: int, max_pixels: int) -> Image.Image:
    """A first frame from a file (the engine's commands), checked and fitted to ``shape`` as a job's is."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest("image", f"cannot read {path}: {exc.strerror}") from None
    return open_checked(check_image(data, shape, max_bytes, max_pixels))


def open_checked(data: bytes) -> Image.Image:
    """A stored first frame (written by check_image) as the pipeline takes it."""
    return Image.open(io.BytesIO(data), formats=["PNG"]).convert("RGB")


def fetch(url: str, max_bytes: int, allow_private: bool) -> bytes:
    """An image URL's bytes, fetched on the address its host was checked to resolve to (no second lookup that a
    rebinding DNS could answer otherwise), no redirects followed, at most ``max_bytes`` read; InvalidRequest
    naming ``image`` for an address, an answer or a size that breaks a rule."""
    try:
        target = resolve_target(url, allow_private)
    except (UnsafeWebhookURL, UnresolvableHost) as exc:
        raise InvalidRequest("image", str(exc).replace("webhook URL", "image URL")) from None
    address = f"[{target.connect_address}]" if ":" in target.connect_address else target.connect_address
    pinned = f"{target.scheme}://{address}:{target.port}{target.path}"
    data = bytearray()
    try:
        with httpx.Client(timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False) as client:
            request = client.build_request(
                "GET", pinned, headers={"Host": target.host_header}, extensions={"sni_hostname": target.host}
            )
            response = client.send(request, stream=True)
            try:
                if response.status_code != 200:
                    raise InvalidRequest("image", f"image URL answered HTTP {response.status_code}, not 200")
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise InvalidRequest("image", f"must be at most {max_bytes} bytes")
            finally:
                response.close()
    except httpx.HTTPError as exc:
        raise InvalidRequest("image", f"image URL could not be fetched: {type(exc).__name__}: {exc}") from None
    return bytes(data)
