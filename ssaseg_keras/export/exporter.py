"""`export`: checkpoint or .keras -> `DIR/<version>/` SavedModel for TF Serving, checked before it is published.

Steps: resolve the input; write the SavedModel into a hidden temporary folder of DIR on the TensorFlow
backend (this process when it runs TensorFlow, else a child process); store the current backend's
Keras predictions on sample images and a metadata file in `assets.extra/` (TF Serving ignores
them); run the check in a fresh process; rename the folder to DIR/<version>.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from ssaseg_keras.export.check_saved_model import CHECK_FILE
from ssaseg_keras.export.samples import nmf_seed, sample_predictions
from ssaseg_keras.export.source import load_inference_model, resolve_source
from ssaseg_keras.models.segmentor import fixed_input_size
from ssaseg_keras.utils.errors import UserError
from ssaseg_keras.utils.files import replace_dir

INPUT_DTYPES = ("uint8", "float32")
METADATA_FILE = os.path.join("assets.extra", "ssaseg_export.json")
CHECK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "check_saved_model.py")


def _child_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU: exact comparisons, no contention with the caller's GPU
    env.update(extra)
    return env


def _last_lines(text, count=5):
    return " | ".join(line for line in text.strip().splitlines()[-count:] if line.strip())


def write_saved_model(source, path, input_dtype="uint8", with_probabilities=False):
    """Load `source` and write its SavedModel to `path` (TensorFlow backend only)."""
    from ssaseg_keras.export.serving import save_serving_model

    model = load_inference_model(source)
    save_serving_model(model, path, source.mean, source.std, input_dtype, with_probabilities)
    return model


def _write_in_child(source, path, input_dtype, with_probabilities):
    import dataclasses

    args = {
        "source": dataclasses.asdict(source),
        "path": path,
        "options": {"input_dtype": input_dtype, "with_probabilities": with_probabilities},
    }
    done = subprocess.run(
        [sys.executable, "-m", "ssaseg_keras.export.tf_child", json.dumps(args)],
        env=_child_env(KERAS_BACKEND="tensorflow"),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        message = _last_lines(done.stderr, 1 if done.returncode == 2 else 5)
        raise UserError(f"the TensorFlow export process failed (exit {done.returncode}): {message}")


def run_check(path, images=(), echo=print):
    """Run check_saved_model.py on `path` in a fresh process; echo its report; return its result dict.

    Raises UserError for an unusable folder or image, or when the predictions do not match.
    """
    done = subprocess.run(
        [
            sys.executable,
            CHECK_SCRIPT,
            os.fspath(path),
            *[a for image in images for a in ("--image", image)],
        ],
        env=_child_env(),
        capture_output=True,
        text=True,
    )
    result = None
    for line in done.stdout.splitlines():
        if line.startswith("CHECK_RESULT "):
            result = json.loads(line[len("CHECK_RESULT ") :])
        else:
            echo(line)
    if done.returncode == 2:
        errors = [
            line[len("CHECK_ERROR ") :]
            for line in done.stderr.splitlines()
            if line.startswith("CHECK_ERROR ")
        ]
        raise UserError(errors[-1] if errors else f"check failed: {_last_lines(done.stderr)}")
    if result is None:
        raise UserError(
            f"the check process failed (exit {done.returncode}): {_last_lines(done.stderr)}"
        )
    if not result["passed"]:
        raise UserError(
            f"check failed: the SavedModel's predictions differ from the Keras model's in {path} "
            "(see the sample lines above)"
        )
    return result


def export_saved_model(
    source_path,
    output,
    version=1,
    force=False,
    input_dtype="uint8",
    with_probabilities=False,
    recipe_path=None,
    echo=print,
):
    """Export `source_path` (checkpoint folder, work dir or .keras) to `output/<version>/` and check it.

    Returns a dict: path, backends, source, check result.
    """
    import keras

    if input_dtype not in INPUT_DTYPES:
        raise UserError(f"--input-dtype {input_dtype!r}: allowed {', '.join(INPUT_DTYPES)}")
    version = int(version)
    if version < 1:
        raise UserError(f"--version {version}: a TF Serving version is a positive integer")
    source = resolve_source(source_path, recipe_path)
    output = os.path.abspath(os.fspath(output))
    if os.path.exists(output) and not os.path.isdir(output):
        raise UserError(
            f"--output {output!r} is a file; give a folder (TF Serving's model base path)"
        )
    target = os.path.join(output, str(version))
    if os.path.exists(target) and not force:
        taken = [int(n) for n in os.listdir(output) if n.isdigit()]
        raise UserError(
            f"{target} already exists; pass --force to replace it or --version {max(taken) + 1} for a new version"
        )
    os.makedirs(output, exist_ok=True)
    backend = keras.backend.backend()
    trained = f", trained on {source.trained_backend}" if source.trained_backend else ""
    where = (
        "in this process"
        if backend == "tensorflow"
        else f"in a child process (current backend: {backend})"
    )
    echo(f"exporting {source.path} ({source.kind}{trained}) with the TensorFlow backend {where}")
    if source.normalization_from == "default":
        echo(
            f"normalisation: the default mean {list(source.mean)} / std {list(source.std)} (a .keras file "
            "carries no recipe; pass --recipe if the model was trained with others)"
        )
    tmp = tempfile.mkdtemp(prefix=f".tmp-export-{version}-", dir=output)
    try:
        saved = os.path.join(tmp, "model")  # tf.saved_model.save wants a fresh folder
        if backend == "tensorflow":
            model = write_saved_model(source, saved, input_dtype, with_probabilities)
        else:
            _write_in_child(source, saved, input_dtype, with_probabilities)
            model = load_inference_model(source)
        os.makedirs(os.path.join(saved, "assets.extra"), exist_ok=True)
        arrays = sample_predictions(model, source.mean, source.std)
        with open(os.path.join(saved, CHECK_FILE), "wb") as handle:
            np.savez_compressed(handle, **arrays)
        metadata = {
            "source": os.path.abspath(source.path),
            "source_kind": source.kind,
            "iteration": source.iteration,
            "trained_backend": source.trained_backend,
            "exported_with_backend": "tensorflow",
            "sample_predictions_backend": backend,
            "input_dtype": input_dtype,
            "outputs": ["labels", "probabilities"] if with_probabilities else ["labels"],
            "num_classes": int(model.num_classes),
            "mean": list(source.mean),
            "normalization_from": source.normalization_from,
            "std": list(source.std),
            "preprocessing": "resize to {}x{}".format(*fixed_input_size(model))
            if fixed_input_size(model)
            else "zero-pad to a multiple of 32",
            "nmf_seed": nmf_seed(model),
            "keras": keras.__version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with open(os.path.join(saved, METADATA_FILE), "w", encoding="utf-8") as handle:
            json.dump(metadata, handle, indent=2)
        # Checked before it is published; the report names the final path.
        result = run_check(saved, echo=lambda line: echo(line.replace(saved, target)))
        replace_dir(saved, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    echo(f"wrote {target} (TF Serving model base path: {output}, version {version})")
    return {"path": target, "metadata": metadata, "check": result}
