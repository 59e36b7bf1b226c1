"""Per-step measurement for `trapo bench`: phase timings, work counters and peak memory of one trainer.

Each optimizer step is split into phases by wrapping the methods a trainer declares in ``timed_methods`` (see
`TRAPOTrainer.timed_methods`; TRL's own `GRPOTrainer` gets `TRL_TIMED_METHODS`). A declared name the trainer does
not have is an error: a renamed method must fail the benchmark, not silently move its time into "other".

- ``generation``: every generate call (calls, rows and tokens are counted too);
- ``reward``: scoring (TRAPO scores between stages);
- ``rollout_other``: the rest of the rollout (tokenising, prefixes, padding, advantages);
- ``forward``: ``compute_loss`` (a forward hook counts the model's forward passes there, per micro-batch);
- ``backward``: ``accelerator.backward``;
- ``optimizer``: between the ``on_pre_optimizer_step`` and ``on_optimizer_step`` callbacks;
- ``other``: the rest of the step (gradient clipping, scheduler, bookkeeping).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` (reset per repetition). On CPU, the resident set's
high-water mark (``VmHWM``), reset per repetition through ``/proc/self/clear_refs``. Timings are wall-clock.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

# Methods that return one finished request of a pipelined rollout (the time waiting on the engine is generation).
REQUEST_METHODS = frozenset({"_next_finished"})
PHASES = ("generation", "reward", "rollout_other", "forward", "backward", "optimizer", "other")
COUNTERS = (
    "generation_calls",
    "generated_rows",
    "generated_tokens",
    "decode_slots",
    "micro_batches",
    "forwards_generation",
    "forwards_loss",
    "forwards_other",
    "loss_tokens",
    "padded_tokens",
)


TRL_TIMED_METHODS = {
    "generation": ("_generate_single_turn",),
    "reward": ("_calculate_rewards",),
    "rollout": ("_generate_and_score_completions",),
    "forward": ("compute_loss",),
}
"""The methods timed on TRL's own `GRPOTrainer` (``trapo bench --methods trl-grpo``)."""


class MissingHookError(AttributeError):
    """A trainer declares a timed method it does not have."""


def timed_methods(trainer) -> dict[str, tuple[str, ...]]:
    """The methods to time per phase: the trainer's own declaration, or TRL's for a plain `GRPOTrainer`."""
    declared = getattr(trainer, "timed_methods", None)
    if declared is None:
        from trl import GRPOTrainer

        if not isinstance(trainer, GRPOTrainer):
            raise MissingHookError(
                f"{type(trainer).__name__} declares no timed_methods: the meter cannot split its step"
            )
        return TRL_TIMED_METHODS
    unknown = set(declared) - {"generation", "reward", "rollout", "forward"}
    if unknown:
        raise ValueError(f"timed_methods has unknown phases {sorted(unknown)}")
    return declared


# ------------------------------------------------------------------------------------------------ measurement


class StepMeter:
    """Wraps a trainer's methods to split each optimizer step into `PHASES` and count generation and forward work.

    ``records`` gets one dict per optimizer step (seconds per phase, ``step``, counters). Only wraps attributes on
    the instance, so the class and other trainers are untouched.
    """

    def __init__(self, trainer):
        from transformers import TrainerCallback

        self.trainer = trainer
        self.records: list[dict] = []
        self.current: Counter | None = None
        self._phase = "other"
        self._t_step = self._t_opt = 0.0
        meter = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                meter.current = Counter()
                meter._t_step = time.perf_counter()

            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                meter._t_opt = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kwargs):
                if meter.current is not None:
                    meter.current["optimizer"] += time.perf_counter() - meter._t_opt

            def on_step_end(self, args, state, control, **kwargs):
                meter._finish_step()

        trainer.add_callback(_Callback())
        after = {"generation": self._after_generate, "forward": self._after_loss}
        for phase, names in timed_methods(trainer).items():
            for name in names:
                self._wrap(trainer, name, phase, self._after_request if name in REQUEST_METHODS else after.get(phase))
        self._wrap(trainer.accelerator, "backward", "backward")
        self._hook = trainer.model.register_forward_hook(self._count_forward)

    def _wrap(self, obj, name: str, phase: str, after=None) -> None:
        inner = getattr(obj, name, None)
        if not callable(inner):
            raise MissingHookError(
                f"{type(obj).__name__} declares {name!r} for the {phase!r} phase but has no such method: update "
                "its timed_methods (a renamed method would otherwise move its time into another phase unnoticed)"
            )
        meter = self

        def timed(*args, **kwargs):
            outer, meter._phase = meter._phase, phase
            start = time.perf_counter()
            try:
                result = inner(*args, **kwargs)
            finally:
                meter._phase = outer
            if meter.current is not None:
                meter.current[phase] += time.perf_counter() - start
                if after is not None:
                    after(args, result)
            return result

        setattr(obj, name, timed)

    def _after_generate(self, args, result) -> None:
        completion_ids = result[0]
        lengths = [len(c) for c in completion_ids]
        self.current["generation_calls"] += 1
        self.current["generated_rows"] += len(lengths)
        self.current["generated_tokens"] += sum(lengths)
        # A padded batch decodes until its longest row ends: rows × longest = the decode work actually done.
        self.current["decode_slots"] += len(lengths) * max(lengths, default=0)

    def _after_request(self, args, result) -> None:
        """A pipelined rollout's engine returned one finished request ``(key, continuation, logprobs)``: it decoded
        exactly its own tokens, with no padding to a batch's longest row."""
        n = len(result[1])
        self.current["generated_rows"] += 1
        self.current["generated_tokens"] += n
        self.current["decode_slots"] += n

    def _after_loss(self, args, result) -> None:
        self.current["micro_batches"] += 1
        inputs = args[1] if len(args) > 1 else None  # compute_loss(model, inputs, ...)
        if isinstance(inputs, dict) and "completion_mask" in inputs:
            # What the forward/backward pay for: completion tokens trained on, and the padded completion area.
            self.current["loss_tokens"] += int(inputs["completion_mask"].sum())
            self.current["padded_tokens"] += inputs["completion_mask"].numel()

    def _count_forward(self, module, inputs, output) -> None:
        if self.current is not None:
            key = {"generation": "forwards_generation", "forward": "forwards_loss"}.get(self._phase, "forwards_other")
            self.current[key] += 1

    def _finish_step(self) -> None:
        c = self.current
        if c is None:
            return
        c["step"] = time.perf_counter() - self._t_step
        c["rollout_other"] = max(c["rollout"] - c["generation"] - c["reward"], 0.0)
        c["other"] = max(c["step"] - c["rollout"] - c["forward"] - c["backward"] - c["optimizer"], 0.0)
        self.records.append(dict(c))
        self.current = None

    def close(self) -> None:
        self._hook.remove()


class PeakMemory:
    """Peak memory over a span: CUDA allocated bytes, or the process's resident high-water mark on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.kind = "cuda_allocated" if device == "cuda" else ("rss_hwm" if _can_reset_hwm() else "rss_hwm_process")
        self.baseline = 0

    def reset(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        else:
            if self.kind == "rss_hwm":
                Path("/proc/self/clear_refs").write_text("5")
            self.baseline = _proc_status("VmRSS")

    def peak(self) -> int:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return _proc_status("VmHWM")


def _proc_status(key: str) -> int:
    """Bytes of a /proc/self/status field (VmRSS, VmHWM); falls back to ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _can_reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
