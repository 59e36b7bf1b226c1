"""`trapo bench` results: per-method summaries, paired TRAPO/other ratios, and the markdown report."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any

from trapo.bench.meter import COUNTERS, PHASES

BEGIN, END = "<!-- trapo-bench:begin -->", "<!-- trapo-bench:end -->"

# ---------------------------------------------------------------------------------------------------- summary


def rep_metrics(result: dict) -> dict[str, float]:
    """Per-step means of one repetition: phase seconds, counters, memory, guided share."""
    steps = result["steps"]
    keys = sorted({k for s in steps for k in s} | {"step", "rollout", *PHASES, *COUNTERS})
    m = {k: statistics.fmean(s.get(k, 0.0) for s in steps) for k in keys}
    m["forwards_loss_per_micro_batch"] = m.get("forwards_loss", 0.0) / max(m.get("micro_batches", 0.0), 1e-9)
    m["peak_memory_mb"] = result["peak_memory"] / 2**20
    m["step_memory_mb"] = (result["peak_memory"] - result["baseline_memory"]) / 2**20
    # TRL's own GRPOTrainer (trl-grpo) keeps no rollout counters: its cells show "–", not a made-up 0.
    counted = bool(result.get("samples"))
    m["guided_share"] = result["guided_samples"] / result["samples"] if counted else None
    m["kept_tokens"] = result.get("kept_tokens", 0) / max(len(steps), 1) if counted else None
    m["reward_mean"] = result.get("reward_mean")
    return m


RATIO_KEYS = (
    "step",
    "generation",
    "reward",
    "rollout_other",
    "forward",
    "backward",
    "optimizer",
    "generation_calls",
    "generated_tokens",
    "decode_slots",
    "loss_tokens",
    "padded_tokens",
    "forwards_loss_per_micro_batch",
    "peak_memory_mb",
    "step_memory_mb",
)


def summarize(results: list[dict], methods: tuple[str, ...] | list[str]) -> dict:
    """Median and spread (min, max) per method and metric, and TRAPO/other ratios computed per repetition."""
    per_method: dict[str, list[dict]] = {m: [] for m in methods}
    by_rep: dict[int, dict[str, dict]] = {}
    for r in results:
        metrics = rep_metrics(r)
        per_method[r["method"]].append(metrics)
        by_rep.setdefault(r["rep"], {})[r["method"]] = metrics
    summary: dict[str, Any] = {"methods": {}, "ratios": {}}
    for method, reps in per_method.items():
        if reps:
            keys = sorted({k for m in reps for k in m})
            values = {k: [m[k] for m in reps if m.get(k) is not None] for k in keys}
            summary["methods"][method] = {k: _spread(v) for k, v in values.items() if v}
    for a, b in ratio_pairs(methods):
        ratios: dict[str, dict] = {}
        for key in RATIO_KEYS:
            values = [
                pair[a][key] / pair[b][key] for pair in by_rep.values() if a in pair and b in pair and pair[b].get(key)
            ]
            if values:
                ratios[key] = _spread(values)
        summary["ratios"][f"{a}/{b}"] = ratios
    return summary


def ratio_pairs(methods) -> list[tuple[str, str]]:
    """Which ratios a run reports: every TRAPO variant over every other method, and every later GRPO variant over the
    first (e.g. ``grpo@pipelined/grpo@staged``: the engine's own difference, with no guidance involved)."""
    base = {m: m.partition("@")[0] for m in methods}
    pairs = [(a, b) for a in methods if base[a] == "trapo" for b in methods if base[b] != "trapo"]
    grpo = [m for m in methods if base[m] == "grpo"]
    return pairs + [(later, grpo[0]) for later in grpo[1:]]


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ----------------------------------------------------------------------------------------------------- report


def machine_info() -> dict:
    import torch
    import transformers
    import trl

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import vllm  # noqa: F401

        info["vllm"] = vllm.__version__
    except ImportError:
        info["vllm"] = None
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _fmt(s: dict, fmt: str = "{:.2f}") -> str:
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}–{fmt.format(s['max'])}]"


def format_report(bench: dict, command: str, title: str | None = None) -> str:
    """Markdown: command, machine, settings, per-method medians [min–max], TRAPO/GRPO ratios and the targets."""
    st, summary, machine = bench["settings"], bench["summary"], bench["machine"]
    methods = [m for m in st["methods"] if m in summary["methods"]]
    load = bench["load_average"]
    lines = [
        f"### {title or 'Run'}: `{st['model']}` model",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores"
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU")
        + f"; Python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}, "
        f"TRL {machine['trl']}, vLLM {machine['vllm'] or 'not installed'}. Load average (1/5/15 min) before "
        f"{_load_str(load['before'])}, after {_load_str(load['after'])}. Bench wall time "
        f"{bench['wall_seconds']:.0f} s.",
        "",
        f"Settings: {st['prompts_per_step']} prompts × {st['num_generations']} samples per step, "
        f"{st['max_completion_length']} completion tokens, reward `{st['reward']}`, {st['reps']} repetitions × "
        f"{st['steps']} timed steps (after {st['warmup_steps']} warm-up), order alternating AB/BA, "
        + ("one worker process per method" if st["isolate"] else "all methods in one process")
        + _rollout_note(st, bench["results"])
        + ". Cells: median over repetitions [min–max] of the per-step mean.",
        "",
    ]
    rows = [
        ("step time (s)", "step", "{:.2f}"),
        ("  generation (s)", "generation", "{:.2f}"),
        ("  reward (s)", "reward", "{:.3f}"),
        ("  rollout other (s)", "rollout_other", "{:.3f}"),
        ("  forward, loss (s)", "forward", "{:.3f}"),
        ("  backward (s)", "backward", "{:.3f}"),
        ("  optimizer (s)", "optimizer", "{:.3f}"),
        ("  other (s)", "other", "{:.3f}"),
        ("generation calls", "generation_calls", "{:.1f}"),
        ("rows generated", "generated_rows", "{:.0f}"),
        ("tokens generated", "generated_tokens", "{:.0f}"),
        ("tokens kept (in the batch)", "kept_tokens", "{:.0f}"),
        ("decode slots (rows × longest)", "decode_slots", "{:.0f}"),
        ("completion tokens in the loss", "loss_tokens", "{:.0f}"),
        ("padded completion area (rows × width)", "padded_tokens", "{:.0f}"),
        ("forward passes, loss, per micro-batch", "forwards_loss_per_micro_batch", "{:.2f}"),
        ("forward passes, outside generation and loss", "forwards_other", "{:.1f}"),
        ("peak memory (MiB)", "peak_memory_mb", "{:.0f}"),
        ("  above the start of the timed steps (MiB)", "step_memory_mb", "{:.0f}"),
        ("guided share of samples", "guided_share", "{:.2f}"),
        ("mean reward", "reward_mean", "{:.2f}"),
    ]
    lines.append("| per step | " + " | ".join(methods) + " |")
    lines.append("|---|" + "---|" * len(methods))
    for label, key, fmt in rows:
        cells = []
        for m in methods:
            stats = summary["methods"][m].get(key)
            cells.append(_fmt(stats, fmt) if stats and stats["median"] is not None else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    mem_kind = bench["results"][0]["memory_kind"] if bench["results"] else "?"
    lines.append(
        "Peak memory is "
        + {
            "cuda_allocated": "`torch.cuda.max_memory_allocated` over the timed steps.",
            "rss_hwm": "the worker's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs "
            "after the warm-up), i.e. the whole process: Python, torch, the model, the dataset.",
            "rss_hwm_process": "the process's resident-set high-water mark since it started (not resettable here).",
        }.get(mem_kind, mem_kind)
    )
    lines.append("")
    for name, ratios in summary["ratios"].items():
        if not ratios:
            continue
        lines.append(f"Ratios {name}, computed per repetition (paired, same prompts), median [min–max]:")
        lines.append("")
        lines.append("| ratio | value |")
        lines.append("|---|---|")
        for key, stats in ratios.items():
            lines.append(f"| {key} | {_fmt(stats)} |")
        lines.append("")
        lines.extend(_targets(ratios, name))
        lines.append("")
    return "\n".join(lines)


def _rollout_note(settings: dict, results: list[dict]) -> str:
    """ ", TRAPO rollout `auto` (ran speculative)": the setting and what the trainer resolved it to."""
    ran = sorted({r["rollout"] for r in results if r.get("rollout") and r["method"].partition("@")[0] == "trapo"})
    asked = settings.get("rollout") or "default"
    if not ran and asked == "default":
        return ""
    return f", TRAPO rollout `{asked}`" + (f" (ran {', '.join(ran)})" if ran else "")


def _targets(ratios: dict, name: str) -> list[str]:
    out = [f"Targets ({name}, measured, not asserted):"]
    checks = [
        ("step time ≤ 1.1×", "step", 1.1),
        ("generation time ≤ 1.1×", "generation", 1.1),
        ("peak memory ≤ 1.1×", "peak_memory_mb", 1.1),
        ("forward passes in the loss per micro-batch = 1×", "forwards_loss_per_micro_batch", 1.0),
    ]
    for label, key, limit in checks:
        if key in ratios:
            value = ratios[key]["median"]
            ok = value <= limit + 1e-9 if key != "forwards_loss_per_micro_batch" else abs(value - 1.0) < 1e-9
            out.append(f"- {label}: {value:.2f} → {'met' if ok else 'NOT met'}")
    return out


def _load_str(load) -> str:
    return "/".join(f"{x:.2f}" for x in load) if load else "n/a"


def write_report(markdown: str, path: str | Path) -> Path:
    """Put ``markdown`` between the bench markers of ``path`` (created if missing), keeping the rest of the file."""
    path = Path(path)
    block = f"{BEGIN}\n{markdown.rstrip()}\n{END}"
    if path.exists():
        text = path.read_text()
        if BEGIN in text or END in text:
            head, _, rest = text.partition(BEGIN)
            if not rest or END not in rest:
                raise ValueError(
                    f"{path}: the report markers are broken (need {BEGIN} followed by {END}); fix them or pass "
                    "--output with another file"
                )
            tail = rest.split(END, 1)[1]
            path.write_text(head + block + tail)
            return path
        path.write_text(text.rstrip() + "\n\n" + block + "\n")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Benchmarks\n\nGenerated by `trapo bench`.\n\n" + block + "\n")
    return path
