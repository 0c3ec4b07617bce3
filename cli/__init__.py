"""The `ssaseg-keras` command-line app (installed as the package `ssaseg_keras_cli`)."""
