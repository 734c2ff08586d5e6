"""What any request's values must be before a route reads them, so that what is stored can be stored: text that
PostgreSQL holds (no NUL, no lone UTF-16 surrogate) and that the README allows (no control characters), finite
numbers (a JSON column refuses NaN and infinities), and nesting no deeper than MAX_DEPTH (the body's size,
SKIPSTEP_MAX_BODY_BYTES, bounds every length). The input guard (api.middleware) applies it to JSON bodies, forms
and query strings; ``/v1/videos`` applies it again to the values its form fields decode to."""

from __future__ import annotations

import math
import re
from typing import Any

# C0 controls other than tab, line feed and carriage return, and DEL: never meaningful in a prompt, a filter
# or a name, and PostgreSQL refuses NUL in text.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CONTROL_RULE = "must not contain control characters (U+0000-U+001F other than tab and line breaks, or U+007F)"
SURROGATE = re.compile(r"[\ud800-\udfff]")
SURROGATE_RULE = "must be Unicode text: a UTF-16 surrogate (U+D800-U+DFFF) is not a character on its own"
FINITE_RULE = "must be a finite number"
MAX_DEPTH = 32
DEPTH_RULE = f"must be nested at most {MAX_DEPTH} levels deep"


def text_rule(text: str) -> str | None:
    """The rule ``text`` breaks, or None."""
    if CONTROL.search(text):
        return CONTROL_RULE
    if SURROGATE.search(text):
        return SURROGATE_RULE
    return None


def violations(document: Any, root: str = "") -> list[tuple[str, str]]:
    """(field, rule) for every value of a parsed document (JSON, or a form's fields) that breaks a rule above;
    fields dotted from ``root`` (``cache.params.threshold``; ``body`` for the document itself). Iterative, so that
    no nesting exhausts the interpreter's stack."""
    found: list[tuple[str, str]] = []
    pending: list[tuple[Any, str, int]] = [(document, root, 0)]
    while pending:
        value, path, depth = pending.pop()
        if depth > MAX_DEPTH:
            found.append((path or "body", DEPTH_RULE))
        elif isinstance(value, str):
            rule = text_rule(value)
            if rule is not None:
                found.append((path or "body", rule))
        elif isinstance(value, float):
            if not math.isfinite(value):
                found.append((path or "body", FINITE_RULE))
        elif isinstance(value, dict):
            for name, item in value.items():
                inner = f"{path}.{name}" if path else str(name)
                rule = text_rule(str(name))
                if rule is not None:
                    found.append((path or "body", rule))
                else:
                    pending.append((item, inner, depth + 1))
        elif isinstance(value, list):
            pending.extend(
                (item, f"{path}.{index}" if path else str(index), depth + 1) for index, item in enumerate(value)
            )
    return sorted(set(found))
