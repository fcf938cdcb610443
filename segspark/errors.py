"""The errors segspark reports to users, each with its process exit code.

Exit codes: 0 success, 1 internal error (a bug or an environment failure: see the log),
2 usage or config error, 3 input data error, 4 output error (the lake location cannot be written).
"""


class SegsparkError(Exception):
    """An error with a message meant for the user; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(SegsparkError, ValueError):
    """A configuration or command line that cannot be used; the message names the key."""

    exit_code = 2


class InputDataError(SegsparkError):
    """Input that cannot be segmented; the message names the column and what to do."""

    exit_code = 3


class OutputError(SegsparkError):
    """The output location cannot be written."""

    exit_code = 4
