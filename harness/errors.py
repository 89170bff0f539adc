"""The harness's error type for user errors: a bad spec, option, run folder or baseline."""

from clip.errors import ClipError


class HarnessError(ClipError):
    """A user error; the message names the value (file, entry, key) and how to fix it.

    It subclasses the project's ClipError, so ``except ClipError`` catches it as well.
    """
