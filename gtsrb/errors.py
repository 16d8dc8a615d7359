"""User-facing errors: one line that names the cause and the fix.

Anything a user can get wrong (a missing dataset, a bad override, a corrupt
image, a checkpoint of another model) raises :class:`UserError`. The command
line entry points print its message as a single ``error: ...`` line instead of
a traceback; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, not with the code."""
