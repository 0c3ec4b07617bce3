"""SavedModel export for TF Serving (`ssaseg-keras export`).

- `export_saved_model(checkpoint_or_keras_file, output_dir, version=1, ...)`: writes and checks
  `output_dir/<version>/` (signature `serving_default`: images -> labels [, probabilities]).
- `run_check(dir)`: the standalone check (`check_saved_model.py`) in a fresh process.
- `request_body(image)`: the TF Serving REST request JSON for an image file.

TensorFlow is imported only where the SavedModel is written or checked.
"""

from ssaseg_keras.export.exporter import export_saved_model, run_check
from ssaseg_keras.export.request import request_body

__all__ = ["export_saved_model", "request_body", "run_check"]
