"""Speed and size benchmarks: parameters, GFLOPs, step times, latency, throughput and memory.

`benchmark(recipe, ...)` measures a recipe's model and its `ssa: false` baseline side by side;
`count_macs(model, size)` counts multiply-adds analytically; `format_report` prints a table.
"""

from ssaseg_keras.benchmark.flops import count_macs
from ssaseg_keras.benchmark.report import format_report
from ssaseg_keras.benchmark.runner import benchmark, random_batch

__all__ = ["benchmark", "count_macs", "format_report", "random_batch"]
