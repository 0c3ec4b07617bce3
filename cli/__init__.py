"""The `ssaseg-keras` command-line app (installed as the package `ssaseg_keras_cli`).

Keras fixes its backend when it is first imported, and importing `ssaseg_keras` imports Keras. A
command's `--backend NAME` is therefore put into `KERAS_BACKEND` here, before any command module
imports the library; each command still checks it (`use_backend`).
"""

import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def backend_from_argv(argv):
    """The NAME of the first `--backend NAME` / `--backend=NAME` in argv (before a `--`), or None."""
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--backend" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


_requested = backend_from_argv(sys.argv[1:])
if _requested in BACKENDS and "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = _requested


def use_backend(backend):
    """Check that a command's `--backend` is the Keras backend in use (see the module docstring)."""
    if not backend:
        return
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            from ssaseg_keras.utils.errors import UserError

            raise UserError(
                f"--backend {backend}: Keras is already loaded with {keras.backend.backend()}; "
                f"set KERAS_BACKEND={backend} instead"
            )
    os.environ["KERAS_BACKEND"] = backend
