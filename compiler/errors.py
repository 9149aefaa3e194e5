"""The one error type users see.

Every problem with the user's input (model, options, data) raises `BnncError`; the CLI prints its
message on one line and exits with status 2. Anything else escaping is a bug in bnnc.
"""


class BnncError(Exception):
    """A problem with the user's input, reported as one line and exit status 2."""
