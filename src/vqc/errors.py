"""The one exception type for mistakes a user can cause (bad file, bad setting), and how any
exception is told in one line."""


class VqcError(Exception):
    """A one-line, user-facing error; the CLI prints it and exits non-zero."""


def first_line(exc: BaseException, with_type: bool = False) -> str:
    """The first non-blank line of the exception's message; its type's name when it has none
    (TimeoutError() says nothing). with_type: "TimeoutError: ..." for messages read without context."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]
