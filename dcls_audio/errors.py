"""The one exception type for problems with what the user gave.

:class:`UsageError` marks a config value, an option, or a data, audio, checkpoint or output file
that cannot be used; its message names the file, key or argument. The command line prints such
an error on one line and exits with status 2; any other exception is a bug and keeps its
traceback. It subclasses ``ValueError``, so Python callers that catch ``ValueError`` still do.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """Something the user gave cannot be used; the message says what and where."""
