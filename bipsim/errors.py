"""The one exception type the command line turns into a single clear line on stderr."""


class CliError(Exception):
    """A user-facing failure: its message is printed as one line and the command exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
