"""A benchmark report as a readable text table (model, baseline and their ratio side by side)."""

from __future__ import annotations

ROWS = (
    ("trainable params, training", "params_training", "{:,.0f}"),
    ("trainable params, inference", "params_inference", "{:,.0f}"),
    ("GFLOPs (conv+dense MACs, papers')", "gflops", "{:.3f}"),
    ("GFLOPs (+ attention/NMF/SSA products, resizes)", "gflops_total", "{:.3f}"),
    ("train step, median (ms)", "train_step_ms", "{:.1f}"),
    ("train images/s", "train_images_per_s", "{:.2f}"),
    ("peak train memory (GiB)", "peak_train_memory_bytes", "gib"),
    ("inference latency, batch 1 (ms)", "inference_latency_ms", "{:.1f}"),
    ("inference images/s, batch B", "inference_images_per_s", "{:.2f}"),
    ("peak inference memory (GiB)", "peak_inference_memory_bytes", "gib"),
)


def _cell(value, fmt):
    if value is None:
        return "n/a"
    if fmt == "gib":
        return f"{value / 2**30:.2f}"
    return fmt.format(value)


def format_report(report):
    """The report of `benchmark` as lines of text: conditions, then one row per figure."""
    c = report["conditions"]
    models = report["models"]
    ratios = report.get("ratios") or {}
    lines = [
        f"recipe {c['recipe']}  ({c['family']}-{c['size_name']}, {c['num_classes']} classes)",
        f"backend {c['backend']} {c['backend_version']}  keras {c['keras_version']}  device {c['device']}",
        f"devices {c.get('devices', 1)} ({c.get('engine', 'single device')})  "
        f"precision {c['precision']}  global batch {c['batch']}  size {c['image_size'][0]}x{c['image_size'][1]}  "
        f"median of {c['iters']} after {c['warmup']} warm-up  loss upsampling {c.get('loss_resize', 'matmul')}"
        + ("  compiled loss terms" if c.get("compile_loss") and c["backend"] == "torch" else "")
        + (f"  conv layout {c['torch_conv_layout']}" if c.get("torch_conv_layout") else "")
        + (f"  depthwise {c['jax_depthwise']}" if c.get("jax_depthwise") else ""),
        "",
    ]
    main_name = "SSA" if models["model"]["ssa"] else "model"
    header = ["", main_name]
    if "baseline" in models:
        header += ["baseline", "ratio"]
    rows = [header]
    for title, key, fmt in ROWS:
        row = [title, _cell(models["model"].get(key), fmt)]
        if "baseline" in models:
            ratio = ratios.get(key)
            row += [
                _cell(models["baseline"].get(key), fmt),
                "n/a" if ratio is None else f"{ratio:.3f}x",
            ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    if c.get("devices", 1) > 1:
        lines.append("several devices: the training step only (GFLOPs and inference: run with --devices 1)")
    memory = models["model"].get("peak_memory_window")
    if (
        memory == "since process start"
        and models["model"].get("peak_train_memory_bytes") is not None
    ):
        lines.append(
            "peak memory: the backend's peak since the process started (it cannot be reset)"
        )
    return "\n".join(lines)
