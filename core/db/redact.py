"""Database errors without the values of the failed statement.

``hide_parameters`` keeps bound values out of SQLAlchemy's own text, but PostgreSQL puts them in its message
too: the primary message quotes a value it could not read (``invalid input syntax for type integer: "..."``),
DETAIL shows a failing row or key, CONTEXT shows a fragment of the parameter (``JSON data, line 1: ...``,
``unnamed portal parameter $1 = '...'``). The driver's exception carries them in its text, and from there
every log line, traceback and error response would. So each error is rewritten where SQLAlchemy raises it
(its ``handle_error`` event): only the primary message, with each quoted value and byte sequence replaced,
and the SQLSTATE, which says what went wrong."""

from __future__ import annotations

import re

from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError

REDACTED = '"…"'
# Words after which PostgreSQL quotes a name from the schema, not a value: those quotes are kept.
NAMES = frozenset(
    "column relation constraint table type encoding function schema index sequence database role operator "
    "collation extension trigger view domain cursor savepoint".split()
)
QUOTED = re.compile(r'"(?:[^"]|"")*"')
BYTES = re.compile(r"0x[0-9a-fA-F]+(?: 0x[0-9a-fA-F]+)*")


def redact(message: str) -> str:
    """The first line of a server's message, with every quoted value and byte sequence replaced."""
    first = message.split("\n", 1)[0]

    def quoted(match: re.Match[str]) -> str:
        before = first[: match.start()].split()
        return match.group() if before and before[-1].lower() in NAMES else REDACTED

    return BYTES.sub("0x…", QUOTED.sub(quoted, first))


def _scrub(context: ExceptionContext) -> None:
    wrapped, original = context.sqlalchemy_exception, context.original_exception
    if context.statement is None or not isinstance(wrapped, DBAPIError):
        return  # not a statement's error from the driver (a failed connect carries no bound value)
    diag = getattr(original, "diag", None)
    primary = getattr(diag, "message_primary", None)
    # A message from the server is redacted; one the driver wrote itself names types and rules, not values.
    text = redact(primary) if primary else str(original).split("\n", 1)[0]
    sqlstate = getattr(diag, "sqlstate", None)
    if sqlstate:
        text += f" (SQLSTATE {sqlstate})"
    # The driver's exception is chained under SQLAlchemy's and printed with it: both lose the values.
    original.args = (text,)
    kind = type(original)
    wrapped.args = (f"({kind.__module__}.{kind.__name__}) {text}",)


def install(engine: Engine) -> None:
    event.listen(engine, "handle_error", _scrub)
