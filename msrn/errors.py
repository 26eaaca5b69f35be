"""The one exception type for user-facing errors: bad files, bad values, bad options."""


class MSRNError(Exception):
    """An error caused by the user's input; the CLI prints its message as one line."""
