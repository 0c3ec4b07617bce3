"""Errors a user can act on. The CLI prints their message as one line and exits with code 2.

Raise one of these (never a bare exception) for a user mistake: a bad recipe key or value, a
missing file or folder, a label value out of range, a corrupt image or checkpoint. The message must
name the file or key and say what to do.
"""


class UserError(Exception):
    """A mistake the user can fix; its message says what and how."""


class RecipeError(UserError):
    """A recipe key is unknown, has a wrong type or value, or names a missing file."""


class DataError(UserError):
    """A dataset folder, file or label value is missing, corrupt or out of range."""


class CheckpointError(UserError):
    """A checkpoint or weights file is missing, corrupt or does not fit the model."""
