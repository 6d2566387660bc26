"""Errors a user can cause and fix, and runs stopped before their end.

The CLI prints either as one line: a `UserError` exits with 2, a `Stopped` run with
128 + the signal's number, as a shell reports a process that signal ended.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator

#: longest text of a value quoted in an error message
SHOWN_CHARACTERS = 80


class UserError(Exception):
    """Bad input: a message that names the problem and what to do about it."""


class Stopped(Exception):
    """A run stopped by a signal before its end, its progress saved: the message says
    where and how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def cut(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """`text` for an error message, cut to a readable length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def shown(value: Any) -> str:
    """repr(value) for an error message, cut to a readable length (a wrong value may be
    a list of millions of items)."""
    return cut(repr(value))


def _requested_bytes(message: str) -> str | None:
    """The size of the failed allocation in an allocator's message, as "12.5 GiB"."""
    found = re.search(r"[Tt]ried to allocate (\d+) bytes", message)
    if found:
        return f"{int(found[1]) / 2**30:,.1f} GiB"
    found = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGTP]?i?B)", message)
    return found[1] if found else None


@contextmanager
def memory_errors_explained(what: str, advice: str) -> Iterator[None]:
    """Turns the allocator's out-of-memory errors (CUDA's OutOfMemoryError, the CPU
    allocator's RuntimeError) into one line saying how much `what` asked for and `advice`."""
    try:
        yield
    except RuntimeError as err:
        message = str(err)
        if type(err).__name__ != "OutOfMemoryError" and "can't allocate memory" not in message:
            raise
        size = _requested_bytes(message)
        asked = f" (one allocation of {size})" if size else ""
        raise UserError(f"{what} needs more memory than the device has{asked}: {advice}") from None
