"""The one exception type for mistakes a user can cause (bad file, bad setting)."""


class VqcError(Exception):
    """A one-line, user-facing error; the CLI prints it and exits non-zero."""
