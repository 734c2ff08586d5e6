"""Attempts in flight per receiver in this process, so that one slow receiver cannot take every thread."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

_lock = threading.Lock()
_in_flight: Counter[str] = Counter()


def endpoint(url: str) -> str:
    """scheme://host:port: what one receiver is, for the cap."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


@contextmanager
def slot(url: str, cap: int) -> Iterator[bool]:
    """Yields True holding one of the endpoint's ``cap`` slots, or False at once if all are taken."""
    name = endpoint(url)
    with _lock:
        taken = _in_flight[name] < cap
        if taken:
            _in_flight[name] += 1
    try:
        yield taken
    finally:
        if taken:
            with _lock:
                _in_flight[name] -= 1
                if not _in_flight[name]:
                    del _in_flight[name]
