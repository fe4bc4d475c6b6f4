"""The one exception type for mistakes a user can fix (bad flags, files, configs).

The CLI prints these as a single line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a one-line
    ``UserError`` quotes of a library's error."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
