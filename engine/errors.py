"""One exception type for everything a user can get wrong, with a message meant for them."""


class GraftError(Exception):
    """A problem the user can act on: the message is shown as is (status line, dialog, CLI line)."""


def not_a_file(path: object) -> GraftError:
    """The error for a path that should be an existing file: a folder is named as one (not 'no such file')."""
    from pathlib import Path

    return GraftError(f"{path}: " + ("a folder, not a file." if Path(str(path)).is_dir() else "no such file."))
