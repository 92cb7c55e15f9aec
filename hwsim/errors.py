"""User-facing errors.

Every mistake a user can make (bad profile key, corrupt model file, missing data path …)
raises :class:`HwsimError` with a one-line message naming the file, key or value and what
is allowed. The CLI alone turns it into ``error: <message>`` and a nonzero exit; any other
exception is a bug and keeps its traceback.
"""


class HwsimError(Exception):
    """A user error: one line, names the offending file/key/value and what is allowed."""
