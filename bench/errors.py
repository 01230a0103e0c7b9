"""The error every `bench` command turns into one line on stderr and a non-zero exit."""


class BenchError(Exception):
    """A user-facing error: the message names the file or value and the fix."""

    exit_code = 2
