"""One function handed to the backend's compiler where Keras runs the training step eagerly.

On JAX and TensorFlow the whole training step is already one XLA program (`jit_compile`), so
`compiled_for_backend(fn)` is `fn`. On PyTorch Keras runs the step eagerly, and SSA's image-size loss
terms (`losses.ssa.pixel_loss_terms`: four upsampled logit maps, log-sum-exps, sigmoid sums) are a
chain of separate full passes over memory; `torch.compile` fuses them (BENCHMARKS.md, "CPU profile":
the terms' forward + backward ~1.9x faster at 256x256 on CPU). The compiled function is made once per
Python function and specialises on static shapes (one compile per input shape, cached by torch); it
needs torch's inductor toolchain (a C++ compiler on CPU, Triton on CUDA).
"""

from __future__ import annotations

import warnings

import keras

_compiled = {}


def compiled_for_backend(fn):
    """`fn` compiled by torch.compile on the PyTorch backend (made once, cached), else `fn` itself."""
    if keras.backend.backend() != "torch":
        return fn
    if fn not in _compiled:
        import torch

        compiled = torch.compile(fn, dynamic=False)

        def call(*args, **kwargs):
            # Keras' shape inference runs on meta tensors or KerasTensors: those take fn eagerly.
            concrete = all(isinstance(a, torch.Tensor) and not a.is_meta for a in args if hasattr(a, "shape"))
            if not concrete:
                return fn(*args, **kwargs)
            with warnings.catch_warnings():
                # Dynamo notes that it traces through Keras' lru_cache'd dtype helpers (pure functions).
                warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
                return compiled(*args, **kwargs)

        _compiled[fn] = call
    return _compiled[fn]


def describe_loss_compilation(enabled: bool) -> str:
    """One line for the training log: what `train.compile_loss` does on this backend."""
    backend = keras.backend.backend()
    if backend != "torch":
        state = "true: nothing more to do" if enabled else "false"
        return f"train.compile_loss {state} (on {backend} the whole training step is one XLA program)"
    return "loss terms compiled with torch.compile (first step of each input shape compiles)" if enabled else (
        "loss terms run eagerly (train.compile_loss: true fuses them with torch.compile)"
    )


def check_loss_compilation_toolchain() -> None:
    """PyTorch on CPU: UserError naming `train.compile_loss` when torch.compile's C++ compiler is missing
    (inductor would otherwise fail deep inside the first training step). CUDA builds bring Triton."""
    if keras.backend.backend() != "torch":
        return
    import torch

    if torch.cuda.is_available():
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as error:  # torch raises its own InvalidCxxCompiler (or an import error)
        from ssaseg_keras.utils.errors import UserError

        raise UserError(
            "train.compile_loss: torch.compile needs a C++ compiler on CPU (g++ or clang++ on PATH, or CXX) "
            f"and found none ({type(error).__name__}); install one, or set train.compile_loss: false"
        ) from None
