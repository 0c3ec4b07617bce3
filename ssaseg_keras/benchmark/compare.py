"""`ssaseg-keras benchmark --compare-backends`: the same benchmark on several Keras backends, one table.

Keras fixes its backend when it is imported, so each backend runs in its own process (the
`benchmark` command with `KERAS_BACKEND` set and `--json`); this module starts them one after the
other (never side by side: they would share the cores or the device) and joins their reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

BACKENDS = ("tensorflow", "jax", "torch")
CLI = "import sys; from ssaseg_keras_cli.main import main; sys.argv[0] = 'ssaseg-keras'; main()"


def compare_backends(arguments, backends=BACKENDS, echo=print, run=subprocess.run):
    """Run `ssaseg-keras benchmark *arguments --json F` once per backend; {backend: report or error}.

    Args:
        arguments: the benchmark command's arguments (recipe and options, without --json and
            --compare-backends).
        backends: Keras backend names, run in this order.
        echo: where each backend's progress goes (its stderr, prefixed with the backend).
        run: `subprocess.run` (a stand-in in tests).

    Returns:
        {backend: the report dict `benchmark --json` writes, or {"error": "..."} when that backend's
        run failed (not installed, out of memory, ...): the others still run}.
    """
    results = {}
    with tempfile.TemporaryDirectory(prefix="ssaseg-compare-") as folder:
        for backend in backends:
            path = os.path.join(folder, f"{backend}.json")
            echo(f"[{backend}] running the benchmark ...")
            env = {**os.environ, "KERAS_BACKEND": backend}
            done = run([sys.executable, "-c", CLI, "benchmark", *arguments, "--json", path], env=env,
                       capture_output=True, text=True)  # fmt: skip
            for line in (done.stderr or "").splitlines():
                if line.startswith("["):  # the benchmark's own progress lines
                    echo(f"[{backend}] {line}")
            if done.returncode != 0 or not os.path.isfile(path):
                lines = [line for line in (done.stderr or "").strip().splitlines() if line.strip()]
                reason = lines[-1] if lines else f"exit code {done.returncode}"
                results[backend] = {"error": reason}
                echo(f"[{backend}] failed: {reason}")
                continue
            with open(path, encoding="utf-8") as handle:
                results[backend] = json.load(handle)
    return results


ROWS = (
    ("train step, baseline (ms)", ("baseline", "train_step_ms"), "{:.1f}"),
    ("train step, SSA (ms)", ("model", "train_step_ms"), "{:.1f}"),
    ("SSA / baseline, train step", ("ratio", "train_step_ms"), "{:.3f}x"),
    ("inference b=1, baseline (ms)", ("baseline", "inference_latency_ms"), "{:.1f}"),
    ("inference b=1, SSA (ms)", ("model", "inference_latency_ms"), "{:.1f}"),
    ("SSA / baseline, inference", ("ratio", "inference_latency_ms"), "{:.3f}x"),
    ("peak train memory, SSA (GiB)", ("model", "peak_train_memory_bytes"), "gib"),
)


def _value(report, where):
    part, key = where
    if part == "ratio":
        return (report.get("ratios") or {}).get(key)
    return (report.get("models", {}).get(part) or {}).get(key)


def format_backend_comparison(results):
    """One table: a column per backend (its figures), then each backend's SSA step against the
    fastest backend's. Failed backends are listed under the table with their reason."""
    reports = {b: r for b, r in results.items() if "error" not in r}
    lines = []
    if not reports:
        return "\n".join(["no backend finished:"] + [f"  {b}: {r['error']}" for b, r in results.items()])
    c = next(iter(reports.values()))["conditions"]
    lines.append(
        f"recipe {c['recipe']}  ({c['family']}-{c['size_name']}, {c['num_classes']} classes)  precision {c['precision']}  "
        f"batch {c['batch']}  size {c['image_size'][0]}x{c['image_size'][1]}  median of {c['iters']} after "
        f"{c['warmup']} warm-up  device {c['device']}"
    )
    lines.append(
        "versions: "
        + ", ".join(f"{b} {r['conditions']['backend_version']}" for b, r in reports.items())
        + f"; keras {c['keras_version']}"
    )
    lines.append("")
    header = [""] + list(reports)
    rows = [header]
    for title, where, fmt in ROWS:
        row = [title]
        for report in reports.values():
            value = _value(report, where)
            if value is None:
                row.append("n/a")
            elif fmt == "gib":
                row.append(f"{value / 2**30:.2f}")
            else:
                row.append(fmt.format(value))
        rows.append(row)
    ssa_steps = {b: _value(r, ("model", "train_step_ms")) for b, r in reports.items()}
    known = {b: v for b, v in ssa_steps.items() if v}
    if known:
        fastest = min(known.values())
        rows.append(["SSA step / fastest backend's"] + [f"{known[b] / fastest:.2f}x" if b in known else "n/a" for b in reports])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for index, row in enumerate(rows):
        lines.append("  ".join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    for backend, report in results.items():
        if "error" in report:
            lines.append(f"{backend}: not measured ({report['error']})")
    return "\n".join(lines)
