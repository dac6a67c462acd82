"""Errors that the CLI turns into exit code 2 (bad input) with a message naming the culprit."""


class InputError(ValueError):
    """Bad input data or files: the message names the file or field and what was expected."""


class WorkError(RuntimeError):
    """The work itself failed (exit 1), e.g. an artifact over budget or a failed audit."""
