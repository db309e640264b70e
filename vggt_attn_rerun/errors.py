"""The one error type users see: a single line that says what is wrong and what is valid."""


class UserError(ValueError):
    """Bad input from the user (a path, an index, an option).

    The CLI prints ``str(err)`` on one line and exits non-zero, without a traceback.
    Subclasses ValueError so that plain Python callers can catch it the usual way.
    """
