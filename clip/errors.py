"""The project's error type for user errors: bad options, bad files, missing data."""


class ClipError(ValueError):
    """A user error: the message names the value and the option or file to fix.

    It subclasses ValueError so callers that catch the standard type still catch it.
    """
