"""`ssaseg-keras info`: versions, the active Keras backend and its devices."""

from __future__ import annotations

import importlib
import importlib.metadata
import os

import click


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def backend_devices(backend):
    """Device names the active backend sees (imports only that backend)."""
    try:
        if backend == "jax":
            import jax

            return [str(d) for d in jax.devices()]
        if backend == "torch":
            import torch

            devices = ["cpu"]
            if torch.cuda.is_available():
                devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
            return devices
        if backend == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_logical_devices()]
    except Exception as error:  # a broken backend install is reported, not raised
        return [f"unavailable: {error}"]
    return []


@click.command()
@click.option("--backend", type=click.Choice(["tensorflow", "jax", "torch"]), help="Backend to report (default: KERAS_BACKEND).")
def info(backend):
    """Show versions (ssaseg-keras, Keras, backends), the active backend and its devices."""
    if backend:
        os.environ["KERAS_BACKEND"] = backend
    import keras

    from ssaseg_keras.version import __version__

    active = keras.backend.backend()
    click.echo(f"ssaseg-keras         {__version__}")
    click.echo(f"keras                {keras.__version__}")
    click.echo(f"backend              {active} (set KERAS_BACKEND=tensorflow|jax|torch to change)")
    for dist in ("tensorflow", "jax", "torch", "keras-cv", "keras-hub", "tensorflow-datasets", "numpy"):
        click.echo(f"{dist:20s} {_version(dist)}")
    click.echo(f"precision            {keras.config.dtype_policy().name}")
    for device in backend_devices(active):
        click.echo(f"device               {device}")
