"""The one exception type for user-facing errors: bad files, bad values, bad options."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class MSRNError(Exception):
    """An error caused by the user's input; the CLI prints its message as one line."""


@contextlib.contextmanager
def setting_up() -> Iterator[None]:
    """While a command sets up, a ValueError that a library raises on a value it was given (torch's "Invalid
    learning rate: -0.1") becomes one MSRNError line naming that value, instead of a traceback."""
    try:
        yield
    except ValueError as e:
        raise MSRNError(f"cannot start: {e}") from None
