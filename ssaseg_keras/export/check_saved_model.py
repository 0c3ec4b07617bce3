"""Check an exported SavedModel the way TF Serving uses it. Standalone: imports TensorFlow, not ssaseg_keras.

    python check_saved_model.py DIR [--image PATH ...]

DIR is a version folder (with saved_model.pb) or a base folder (its highest numeric version). Prints
the `serving_default` signature as `saved_model_cli show` does, loads the model with
`tf.saved_model.load`, runs the signature on the sample images stored at export time
(assets.extra/ssaseg_check.npz) and compares with the Keras model's predictions stored with them:
label agreement >= 99.9 % and probabilities within 1e-4. --image runs user images too. The last
stdout line is `CHECK_RESULT {json}`. Exit code 0: passed, 1: mismatch, 2: unusable input.
"""

from __future__ import annotations

import json
import os
import sys

MIN_AGREEMENT = 0.999
MAX_PROBABILITY_DIFF = 1e-4
CHECK_FILE = os.path.join("assets.extra", "ssaseg_check.npz")


class CheckInputError(Exception):
    """DIR or an image is not usable; the message says which and why."""


def resolve_version_dir(path):
    """The version folder holding saved_model.pb: `path` itself or its highest numeric child."""
    if not os.path.isdir(path):
        kind = "a file" if os.path.exists(path) else "missing"
        raise CheckInputError(
            f"{path!r} is {kind}; give an export folder (DIR or DIR/<version>) to --check"
        )
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = [
        n
        for n in os.listdir(path)
        if n.isdigit() and os.path.isfile(os.path.join(path, n, "saved_model.pb"))
    ]
    if not versions:
        raise CheckInputError(
            f"{path!r} holds no SavedModel (saved_model.pb, or <version>/saved_model.pb)"
        )
    return os.path.join(path, max(versions, key=int))


def _shape(tensor_info):
    if tensor_info.tensor_shape.unknown_rank:
        return "unknown_rank"
    return "(" + ", ".join(str(d.size) for d in tensor_info.tensor_shape.dim) + ")"


def describe_signature(version_dir, key="serving_default"):
    """The text `saved_model_cli show --tag_set serve --signature_def KEY` prints."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as handle:
        proto.ParseFromString(handle.read())
    graphs = [g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags]
    if not graphs or key not in graphs[0].signature_def:
        raise CheckInputError(f"{version_dir} has no '{key}' signature in its 'serve' graph")
    signature = graphs[0].signature_def[key]
    lines = ["The given SavedModel SignatureDef contains the following input(s):"]
    for title, tensors in (("inputs", signature.inputs), ("outputs", signature.outputs)):
        if title == "outputs":
            lines.append("The given SavedModel SignatureDef contains the following output(s):")
        for name in sorted(tensors):
            info = tensors[name]
            lines += [
                f"  {title}['{name}'] tensor_info:",
                f"      dtype: {types_pb2.DataType.Name(info.dtype)}",
                f"      shape: {_shape(info)}",
                f"      name: {info.name}",
            ]
    lines.append(f"Method name is: {signature.method_name}")
    return "\n".join(lines)


def _load_image(path):
    import numpy as np
    import tensorflow as tf

    try:
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        reason = error.message.splitlines()[0] if error.message else type(error).__name__
        raise CheckInputError(
            f"--image {path!r} is not a readable image (PNG/JPEG/BMP/GIF): {reason}"
        ) from None
    return np.asarray(image)[None]


def run_check(path, image_paths=()):
    import numpy as np
    import tensorflow as tf

    version_dir = resolve_version_dir(path)
    print(f"SavedModel {version_dir}")
    print(describe_signature(version_dir))
    check_path = os.path.join(version_dir, CHECK_FILE)
    if not os.path.isfile(check_path):
        raise CheckInputError(
            f"{check_path} is missing: {version_dir} was not written by `ssaseg-keras export`"
        )
    user_images = [(p, _load_image(p)) for p in image_paths]
    serve = tf.saved_model.load(version_dir).signatures["serving_default"]
    input_dtype = serve.structured_input_signature[1]["images"].dtype
    results, passed = [], True
    with np.load(check_path) as reference:
        for i in range(len([k for k in reference.files if k.startswith("images_")])):
            images = reference[f"images_{i}"]
            out = serve(images=tf.constant(images, dtype=input_dtype))
            labels = out["labels"].numpy()
            expected = reference[f"labels_{i}"]
            row = {"shape": list(images.shape), "labels_dtype": labels.dtype.name}
            ok = labels.dtype == np.int32 and labels.shape == expected.shape
            row["agreement"] = float((labels == expected).mean()) if ok else 0.0
            ok = ok and row["agreement"] >= MIN_AGREEMENT
            if "probabilities" in out:
                probabilities = out["probabilities"].numpy()
                same = probabilities.shape == reference[f"probabilities_{i}"].shape
                diff = (
                    np.abs(probabilities - reference[f"probabilities_{i}"]).max()
                    if same
                    else np.inf
                )
                row["max_probability_diff"] = float(diff)
                ok = ok and same and diff <= MAX_PROBABILITY_DIFF
            row["ok"] = bool(ok)
            passed = passed and ok
            results.append(row)
            diff_text = (
                f", probabilities max |diff| {row['max_probability_diff']:.2e}"
                if "max_probability_diff" in row
                else ""
            )
            print(
                f"sample {tuple(images.shape)} {input_dtype.name}: labels {labels.dtype.name} {labels.shape}, "
                f"agreement with Keras {100 * row['agreement']:.3f}%{diff_text} -> {'ok' if ok else 'MISMATCH'}"
            )
    for image_path, image in user_images:
        labels = serve(images=tf.constant(image, dtype=input_dtype))["labels"].numpy()
        values, counts = np.unique(labels, return_counts=True)
        top = ", ".join(
            f"{v}: {100 * c / labels.size:.1f}%"
            for v, c in sorted(zip(values, counts), key=lambda t: -t[1])[:5]
        )
        print(f"image {image_path} {image.shape[1]}x{image.shape[2]}: labels {top}")
    return {
        "version_dir": version_dir,
        "passed": bool(passed),
        "samples": results,
        "thresholds": {"agreement": MIN_AGREEMENT, "probabilities": MAX_PROBABILITY_DIFF},
        "imports_ssaseg_keras": "ssaseg_keras" in sys.modules,
        "tensorflow": tf.__version__,
    }


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    images = []
    while "--image" in args:
        at = args.index("--image")
        images.append(args[at + 1])
        del args[at : at + 2]
    if len(args) != 1:
        print("usage: check_saved_model.py DIR [--image PATH ...]", file=sys.stderr)
        return 2
    try:
        result = run_check(args[0], images)
    except CheckInputError as error:
        print(f"CHECK_ERROR {error}", file=sys.stderr)
        return 2
    print("CHECK_RESULT " + json.dumps(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
