"""The one exception type for user mistakes: the CLI prints its message on one line and exits non-zero."""


class UserError(ValueError):
    """A mistake in the user's input (file, folder, option), explained in one line; a bad value, so a ValueError."""


class ConfigError(UserError):
    """A bad value of one named setting (a TrainConfig field): the message starts with the field's name, which a
    command line re-names as the flag that set it (`naming`)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem

    def naming(self, name: str) -> str:
        """The message with the setting called `name`, e.g. its flag '--batch-size'."""
        return f"{name} {self.problem}"
