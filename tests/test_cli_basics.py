"""The console script: --help, --version, info, and a user mistake's exit code."""

from __future__ import annotations

import subprocess
import sys

from ssaseg_keras.version import __version__


def run_cli(*args):
    code = "import sys; from ssaseg_keras_cli.main import main; sys.argv[0] = 'ssaseg-keras'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_version_and_help(capsys):
    """In-process through the console script's `main` (the real script runs in the tests below)."""
    from ssaseg_keras_cli.main import main

    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "KERAS_BACKEND" in out


def test_info_reports_versions_backend_and_devices():
    import keras

    done = run_cli("info")
    assert done.returncode == 0, done.stderr
    assert f"keras                {keras.__version__}" in done.stdout
    assert f"backend              {keras.backend.backend()}" in done.stdout
    assert "device" in done.stdout


def test_unknown_command_is_one_line_and_exit_code_2():
    done = run_cli("no-such-command")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "No such command" in done.stderr


def test_backend_option_takes_effect_although_the_cli_imports_keras():
    """`import ssaseg_keras` imports Keras, which fixes its backend; `--backend` is read first."""
    import keras

    other = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}[keras.backend.backend()]
    code = (
        "import sys; from ssaseg_keras_cli.main import main; sys.argv[0] = 'ssaseg-keras'\n"
        "try:\n    main()\nfinally:\n    import keras; print('BACKEND', keras.backend.backend())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "train", "missing.yaml", "--backend", other], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and "does not exist" in done.stderr and "already loaded" not in done.stderr, done.stderr
    assert f"BACKEND {other}" in done.stdout
