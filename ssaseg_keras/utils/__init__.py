"""Small shared utilities (errors, atomic file writing, ...)."""

from ssaseg_keras.utils.errors import CheckpointError, DataError, RecipeError, UserError

__all__ = ["CheckpointError", "DataError", "RecipeError", "UserError"]
