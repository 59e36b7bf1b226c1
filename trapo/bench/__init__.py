"""`trapo bench`: what a TRAPO training step costs over a GRPO step, measured side by side (docs/benchmarks.md).

- `trapo.bench.meter`: phase timings, counters and peak memory of one trainer's steps;
- `trapo.bench.run`: settings, worker processes, paired repetitions;
- `trapo.bench.report`: summaries, ratios and the markdown report.
"""

from trapo.bench.meter import PeakMemory, StepMeter
from trapo.bench.report import format_report, summarize, write_report
from trapo.bench.run import run_bench
from trapo.bench.setup import BenchSettings

__all__ = ["BenchSettings", "PeakMemory", "StepMeter", "format_report", "run_bench", "summarize", "write_report"]
