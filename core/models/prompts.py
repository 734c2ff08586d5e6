"""Encoded prompts kept for repeated prompts: a worker serving the same prompt again skips its text encoder.

The text encoder is deterministic (inference mode, no dropout) and its weights do not change while
a worker runs, so the embeddings of a (prompt, negative prompt, guidance) triple are the same at
every call; the pipeline only reads them. Least recently used first out, at most ``size`` entries
(Wan's UMT5 embeddings: 512 x 4096 values per prompt, 4 MiB in bf16).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

Key = tuple[str, str, bool]


class PromptCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Key, dict[str, Any]] = OrderedDict()

    def get(self, key: Key, encode: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """The encoded prompts for ``key`` and whether they came from the cache."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry, True
        entry = encode()
        if self.size:
            self._entries[key] = entry
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry, False

    def __len__(self) -> int:
        return len(self._entries)
