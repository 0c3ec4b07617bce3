"""Per-backend timing helpers: device description, synchronisation and peak device memory.

The model code stays backend-agnostic; only these helpers know the backends' device APIs.
"""

from __future__ import annotations

import platform

import keras


def backend_version():
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    try:
        return __import__(module).__version__
    except Exception:  # an unusual backend: report what Keras says
        return "unknown"


def accelerator():
    """("gpu" | "cpu", description) of the device the active backend computes on."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return device.platform, f"{device.device_kind} (jax {device.platform})"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return "gpu", torch.cuda.get_device_name(0)
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(
                tf.config.list_physical_devices("GPU")[0]
            )
            return "gpu", details.get("device_name", gpus[0].name)
    cpu = platform.processor() or platform.machine()
    import os

    return "cpu", f"CPU {cpu} ({os.cpu_count()} cores)"


def synchronize(tree=None):
    """Wait until the device has finished the work queued so far (and `tree`'s arrays are ready)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if tree is not None:
            jax.block_until_ready(tree)
        else:
            jax.effects_barrier()
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    if tree is not None:  # TensorFlow (and a final guard elsewhere): reading a value waits for it
        keras.tree.map_structure(lambda x: keras.ops.convert_to_numpy(x), tree)


def reset_peak_memory():
    """Start a new peak-memory window where the backend allows it (torch, TensorFlow GPU).

    Returns True when the window was reset; JAX's peak counts from the start of the process.
    """
    backend = keras.backend.backend()
    try:
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
                return True
        elif backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                tf.config.experimental.reset_memory_stats("GPU:0")
                return True
    except Exception:  # a backend without the API: no window
        return False
    return False


def peak_memory_bytes():
    """Peak device memory in bytes since the last reset, or None where the backend does not expose it
    (every backend on CPU)."""
    backend = keras.backend.backend()
    try:
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return int(torch.cuda.max_memory_allocated())
        elif backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats()
            if stats and "peak_bytes_in_use" in stats:
                return int(stats["peak_bytes_in_use"])
        elif backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    except Exception:  # the API is missing or the device says no
        return None
    return None
