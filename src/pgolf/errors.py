"""The three error kinds the CLI maps to exit codes.

InputError and ConfigError (bad files, fields or arguments) exit 2 with a message naming the file or
field and what was expected; WorkError (the work itself failed: an artifact over budget, a failed
audit, a diverged run) exits 1.
"""


class InputError(ValueError):
    """Bad input data or files: the message names the file or field and what was expected."""


class ConfigError(InputError):
    """A bad configuration value: the message names the dotted field, e.g. model.num_layers."""


class WorkError(RuntimeError):
    """The work itself failed (exit 1), e.g. an artifact over budget or a failed audit."""
