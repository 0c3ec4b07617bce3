"""`python -m ssaseg_keras.export.tf_child JSON`: write the SavedModel on the TensorFlow backend.

Run by `export` in a child process (KERAS_BACKEND=tensorflow) when the caller's backend is JAX or
PyTorch. JSON holds the `ExportSource` fields and the options of `write_saved_model`. Exit code 2 and
one line on stderr for a user error.
"""

from __future__ import annotations

import json
import sys


def main(argv=None):
    args = json.loads((argv or sys.argv[1:])[0])
    import keras

    if keras.backend.backend() != "tensorflow":
        print("tf_child needs KERAS_BACKEND=tensorflow", file=sys.stderr)
        return 2
    from ssaseg_keras.export.exporter import write_saved_model
    from ssaseg_keras.export.source import ExportSource
    from ssaseg_keras.utils.errors import UserError

    try:
        write_saved_model(ExportSource(**args["source"]), args["path"], **args["options"])
    except UserError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
