"""`ssaseg-keras`: the click app. Each command group lives in its own module, listed in COMMANDS.

User mistakes raise `ssaseg_keras.utils.UserError`; `main` prints its message as one line on stderr
and exits with code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from ssaseg_keras.utils.errors import UserError
from ssaseg_keras.version import __version__

# (module in this package, attribute): each is a click command or group added to the app.
COMMANDS = [
    ("info", "info"),
    ("data", "data"),
    ("convert", "convert"),
    ("convert", "upgrade_checkpoint"),
    ("train", "train"),
    ("train", "evaluate"),
    ("train", "predict"),
    ("train", "recipes"),
    ("export", "export"),
    ("benchmark", "benchmark"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="ssaseg-keras")
def cli():
    """SSA-Seg semantic segmentation on Keras 3 (TensorFlow, JAX or PyTorch).

    Choose the backend with the KERAS_BACKEND environment variable (or a command's --backend).
    """


for _module, _attr in COMMANDS:
    cli.add_command(getattr(importlib.import_module(f"ssaseg_keras_cli.{_module}"), _attr))


def main(argv=None):
    """Console-script entry point: runs the app, turning user mistakes into one line and exit code 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    try:
        cli.main(args=argv, prog_name="ssaseg-keras", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as error:
        error.show()
        sys.exit(2)
    except UserError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    return 0


if __name__ == "__main__":
    main()
