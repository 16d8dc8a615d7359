"""User-facing errors: one line that names the cause and the fix.

Anything a user can get wrong (a missing dataset, a bad override, a corrupt
image, a checkpoint of another model) raises :class:`UserError`. The command
line entry points print its message as a single ``error: ...`` line instead of
a traceback; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, not with the code."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's first line, at most ``limit`` characters (its type's name when it has no message): the
    reason a :class:`UserError` quotes from the library error it replaces."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
