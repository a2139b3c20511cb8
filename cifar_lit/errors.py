"""The one base of every error the user can act on.

A ``UserError``'s message already says what went wrong (naming the flag, file, setting or
service) and what to do, in one line: the commands print it without a traceback (the Prefect UI
still gets the traceback). Each error keeps its standard base too (``ValueError`` for bad input,
``TimeoutError`` for a lock, ...) so callers that catch those still do.
"""


class UserError(Exception):
    """A failure the user can act on; its message is one line that says how."""
