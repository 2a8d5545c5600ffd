"""The one exception type for user mistakes: the CLI prints its message on one line and exits non-zero."""


class UserError(Exception):
    """A mistake in the user's input (file, folder, option), explained in one line."""
