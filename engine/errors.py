"""One exception type for everything a user can get wrong, with a message meant for them."""


class GraftError(Exception):
    """A problem the user can act on: the message is shown as is (status line, dialog, CLI line)."""
