"""Guards that keep a long run alive: bounded reward calls and skipped non-finite optimizer steps.

Each guard is small and independent of the trainer so it can be tested on its own; `TRAPOTrainer` wires them in
(crash-safe checkpoints are in `trapo.checkpointing`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch

from trapo.preflight import RewardError

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- reward calls


class RewardTimeout(Exception):
    """A reward function did not return within its time limit."""


def call_with_timeout(func: Callable[..., Any], timeout: float | None, **kwargs) -> Any:
    """``func(**kwargs)``, raising `RewardTimeout` after ``timeout`` seconds (None or ≤ 0: no limit).

    Why a daemon thread: a Python function cannot be interrupted from outside, and a subprocess would need the
    function and its arguments to be picklable, which TRL reward functions (closures, lambdas) often are not. A call
    that times out is abandoned: its thread runs on in the background and its result is dropped. Rewards that may
    hang in native code for good (a sympy blow-up) should bound themselves in a killable worker, as
    `trapo.rewards.math_reward` does; this guard is the backstop that keeps the training loop moving.
    """
    if not timeout or timeout <= 0:
        return func(**kwargs)
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = func(**kwargs)
        except BaseException as error:  # re-raised in the caller's thread
            box["error"] = error

    thread = threading.Thread(target=target, name=f"reward-{getattr(func, '__name__', 'func')}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise RewardTimeout(f"no result after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class BoundedRewardCalls:
    """Reward-function calls that cannot stall or silently break a run.

    Each call is bounded by ``timeout`` (`call_with_timeout`). A call that times out or raises scores 0 for its batch
    and is counted in ``stats`` (``reward_timeouts`` / ``reward_errors``); ``max_failures`` failed calls in a row stop
    training with the last error, because a few failures are survivable and a broken function is not.
    """

    def __init__(self, timeout: float | None, max_failures: int, stats: Counter, async_loop=None):
        self.timeout, self.max_failures, self.stats = timeout, max_failures, stats
        self.async_loop = async_loop  # where async reward functions are awaited (TRL's daemon event loop)
        self.consecutive_failures = 0

    def __call__(self, func: Callable[..., Any], name: str, count: int, **kwargs) -> list[float]:
        """``func(**kwargs)``'s rewards for ``count`` completions as floats (None → NaN: unscorable), or ``count``
        zeros when the call failed. Async functions are awaited on ``async_loop``."""
        call = self._sync(func)
        try:
            values = call_with_timeout(call, self.timeout, **kwargs)
        except Exception as error:
            kind = "timeouts" if isinstance(error, RewardTimeout) else "errors"
            self.stats[f"reward_{kind}"] += 1
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.max_failures:
                raise RewardError(
                    f"reward function {name!r} failed {self.consecutive_failures} calls in a row; last: "
                    f"{type(error).__name__}: {error}. Fix the function or raise max_reward_failures"
                ) from error
            logger.warning(
                "reward function %r failed (%s: %s); its %d completions score 0",
                name,
                type(error).__name__,
                error,
                count,
            )
            return [0.0] * count
        self.consecutive_failures = 0
        if values is None or isinstance(values, str) or not hasattr(values, "__len__"):
            raise ValueError(
                f"reward function {name!r} returned {values!r:.60} instead of a list of {count} rewards (one per "
                "completion; None inside the list marks a completion it cannot score)"
            )
        if len(values) != count:
            raise ValueError(f"reward function {name!r} returned {len(values)} rewards for {count} completions")
        return [reward_value(v, name, i) for i, v in enumerate(values)]

    def _sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` itself, or for an async function one that runs it to completion on ``async_loop``."""
        from trl.trainer.utils import is_async_callable

        if not is_async_callable(func):
            return func
        if self.async_loop is None:
            raise RewardError(f"{getattr(func, '__name__', func)!r} is async but no event loop was given to await it")
        import asyncio

        return lambda **kwargs: asyncio.run_coroutine_threadsafe(func(**kwargs), self.async_loop).result()


def reward_value(value: Any, name: str, index: int) -> float:
    """One reward as a float: a real number, or None / NaN for a completion the function cannot score. Anything else
    (a string, a list, infinity) is an error naming the function and the value."""
    if value is None:
        return math.nan
    if isinstance(value, bool | int | float) or (hasattr(value, "__float__") and getattr(value, "ndim", 0) == 0):
        number = float(value)
        if not math.isinf(number):
            return number
    raise RewardError(
        f"reward function {name!r} returned {value!r:.60} ({type(value).__name__}) for completion {index}: a reward "
        "must be a finite number, or None (NaN) for a completion it cannot score"
    )


class UnscorableRewards:
    """Samples no reward function could score (every function gave None or NaN) must not train silently as zeros.

    Under TRAPO a prompt whose samples all score 0 gets the whole expert trace, so a reward that returns None for
    everything quietly turns the run into SFT while the loss looks normal. This guard counts such samples per step
    (``unscorable_rewards`` in the trainer's stats, ``trapo/unscorable_share`` in its logs), warns once with the
    reward functions' names and an example, and stops training after ``max_steps`` consecutive steps in which at least
    ``max_share`` of the samples were unscorable.
    """

    def __init__(self, max_share: float, max_steps: int, stats: Counter):
        self.max_share, self.max_steps, self.stats = max_share, max_steps, stats
        self.step_total = self.step_unscorable = self.consecutive = 0
        self.warned = False

    def observe(self, per_func: torch.Tensor, names: list[str], completions: list) -> torch.Tensor:
        """``per_func`` (samples × functions) with None/NaN as 0; counts and reports the unscorable samples."""
        unscorable = per_func.isnan().all(dim=1)
        count = int(unscorable.sum())
        self.step_total += len(unscorable)
        self.step_unscorable += count
        self.stats["unscorable_rewards"] += count
        if count and not self.warned:
            self.warned = True
            example = completions[int(unscorable.nonzero()[0, 0])]
            logger.warning(
                "reward function(s) %s returned None or NaN for %d of %d samples (e.g. for the completion %.120r): "
                "they score 0 (counted in trapo/unscorable_share). Training stops after %d steps in a row with at "
                "least %.0f%% unscorable samples (max_unscorable_steps, max_unscorable_share)",
                ", ".join(repr(n) for n in names),
                count,
                len(unscorable),
                example,
                self.max_steps,
                100 * self.max_share,
            )
        return per_func.nan_to_num(0.0)

    def end_step(self, global_unscorable: int | None = None, global_total: int | None = None) -> float:
        """Close a step: its unscorable share (over every process when the totals are given); raises when the reward
        has been unusable for ``max_steps`` steps in a row."""
        bad = self.step_unscorable if global_unscorable is None else global_unscorable
        total = self.step_total if global_total is None else global_total
        self.step_total = self.step_unscorable = 0
        share = bad / total if total else 0.0
        self.consecutive = self.consecutive + 1 if bad and share >= self.max_share else 0
        if self.consecutive >= self.max_steps:
            raise RewardError(
                f"no reward function could score {share:.0%} of the samples for {self.consecutive} steps in a row "
                "(they returned None or NaN): training on that signal would teach nothing but imitation. Fix the "
                "reward function, or raise max_unscorable_steps / max_unscorable_share"
            )
        return share


# ---------------------------------------------------------------- non-finite steps


def grads_are_finite(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """True when every gradient present is finite: one reduction per device, then a single host sync."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            by_device.setdefault(p.grad.device, []).append(p.grad.isfinite().all())
    flags = [torch.stack(v).all().cpu() for v in by_device.values()]
    return bool(torch.stack(flags).all()) if flags else True


def skip_nonfinite_steps(optimizer: torch.optim.Optimizer, all_finite: Callable[[bool], bool], on_skip) -> None:
    """Make ``optimizer.step`` a no-op when any gradient is NaN or infinite, so weights and optimizer state stay
    exactly as they were (zeroing the gradients instead would still move Adam's moments and apply weight decay).

    ``all_finite(local_flag)`` turns this process's verdict into the global one (an all-reduce under several
    processes, so every rank skips together); ``on_skip()`` is called for each skipped step.
    """
    if getattr(optimizer, "_trapo_guarded", False):
        return
    inner_step = optimizer.step

    def step(*args, **kwargs):
        params = (p for group in optimizer.param_groups for p in group["params"])
        if not all_finite(grads_are_finite(params)):
            on_skip()
            return None
        return inner_step(*args, **kwargs)

    optimizer.step = step
    optimizer._trapo_guarded = True


class NonFiniteStepGuard:
    """Trainer mixin (before the HF/TRL trainer class): the trainer's optimizer, with steps on non-finite gradients
    skipped (`skip_nonfinite_steps`, on when ``args.skip_nonfinite_steps``), every process skipping together, each
    skip counted in ``rollout_stats`` and logged as ``trapo/skipped_steps``."""

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.args.skip_nonfinite_steps:
            skip_nonfinite_steps(optimizer, self._all_processes_finite, self._on_skipped_step)
        return optimizer

    def _all_processes_finite(self, local_finite: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return local_finite
        flag = torch.tensor([0.0 if local_finite else 1.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() == 0)

    def _on_skipped_step(self) -> None:
        self.rollout_stats["skipped_steps"] += 1
        logger.warning(
            "step %d: non-finite loss or gradient, optimizer step skipped (%d so far)",
            self.state.global_step + 1,
            self.rollout_stats["skipped_steps"],
        )
        self._metrics["train"]["trapo/skipped_steps"].append(float(self.rollout_stats["skipped_steps"]))
