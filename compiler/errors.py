"""The one error type users see.

Every problem with the user's input (model, options, data) raises `BnncError`; the CLI prints its
message on one line and exits with status 2. Anything else escaping is a bug in bnnc.
"""


class BnncError(Exception):
    """A problem with the user's input, reported as one line and exit status 2."""


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped as in a Python literal, so a
    message quoting a model's own names stays on one line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))
