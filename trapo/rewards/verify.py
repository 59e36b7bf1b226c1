"""Math-Verify scoring of one completion, as a worker of `trapo.rewards.math_pool` runs it: answer extraction (the last
``\\boxed{}``), the gold answer's form, and `score_one` under a ``setitimer`` alarm. Pure functions, no pool, so
the pool's workers and in-process scoring import the same code."""

from __future__ import annotations

import logging
import signal
import threading
from functools import lru_cache
from typing import Any

_MAX_BOXES_TRIED = 16  # unbalanced \boxed{ to skip before giving up (bounds the scan on adversarial text)
_BOX_COMMANDS = ("\\boxed", "\\fbox")


# ----------------------------------------------------------------------------------------------------- extraction
def _braced(text: str, i: int, limit: int) -> str | None:
    """Content of the ``{...}`` group starting at ``text[i]`` (after spaces), or None if absent/unbalanced/too long."""
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth, j, stop = 0, i, min(len(text), i + limit + 2)
    while j < stop:
        ch = text[j]
        if ch == "\\":  # \{ and \} are literal braces, not grouping
            j += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None


def last_boxed(text: str, max_chars: int = 4096) -> str | None:
    """Content of the last ``\\boxed{}`` or ``\\fbox{}`` whose braces balance within ``max_chars``, else None.

    A box cut off by the generation limit (unbalanced) is skipped in favour of the previous one. At most
    ``_MAX_BOXES_TRIED`` boxes are scanned, each over at most ``max_chars`` characters, so the cost is bounded even on
    a completion made of thousands of ``\\boxed{``.
    """
    end = len(text)
    for _ in range(_MAX_BOXES_TRIED):
        start, command = max((text.rfind(c, 0, end), c) for c in _BOX_COMMANDS)
        if start < 0:
            return None
        content = _braced(text, start + len(command), max_chars)
        if content is not None:
            return content
        end = start
    return None


def completion_text(completion: Any) -> str:
    """Text of a completion given as a string, a chat message, or a list of messages (last assistant turn)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list | tuple):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                content = message.get("content")
                if isinstance(content, list):  # multimodal parts: [{"type": "text", "text": ...}, ...]
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                return content if isinstance(content, str) else ""
        return ""
    return "" if completion is None else str(completion)


def prediction_text(completion: Any, max_chars: int = 4096) -> str:
    """What Math-Verify is asked to parse for a completion: ``\\boxed{<last box>}``, else the text's tail.

    Only the tail is kept because the final answer sits at the end of a solution, while Math-Verify's regex
    extraction and its attempts to parse every candidate expression grow with the length of the text: a 100 kB
    completion would spend its whole timeout (and the IPC) on reasoning that cannot change the verdict.
    """
    text = completion_text(completion)
    boxed = last_boxed(text, max_chars)
    if boxed is not None:
        return "\\boxed{" + boxed + "}"
    return text[-max_chars:]


def gold_text(answer: Any) -> str | None:
    """The ground truth as Math-Verify input (``\\boxed{...}`` so bare LaTeX like ``\\frac12`` parses), or None."""
    if answer is None:
        return None
    text = str(answer).strip()  # numbers arrive as int/float from some datasets
    if any(c in text for c in _BOX_COMMANDS):
        return text
    if len(text) > 1 and text[0] == "$" and text[-1] == "$" and text[-2] != "\\":
        text = text.strip("$").strip()
    return "\\boxed{" + text + "}" if text else None


# --------------------------------------------------------------------------------------------- scoring (worker side)
class _ItemTimeout(BaseException):
    """Raised by the alarm. A BaseException so Math-Verify's ``except Exception`` blocks do not swallow it."""


def _raise_timeout(signum, frame):
    raise _ItemTimeout


class _DropTimeoutDisabledWarning(logging.Filter):
    """Math-Verify warns once that its own timeout is off; here the timeout is ours, so the warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


@lru_cache(maxsize=4096)
def _parse_gold(text: str):
    from math_verify import parse

    return parse(text, parsing_timeout=None)  # G samples share a gold answer: parse it once per worker


def _whole_text_verdict(gold: str, text: str) -> tuple[float, str]:
    """Math-Verify with its default extraction on the whole text (so several boxes, "the answer is", a bare final
    expression all count) against ``$gold$``: the released training reward (TRAPO's ``reward_impl_version`` 4,
    LUFFY's 3 after its ``</think>``, `trapo_src/math_verify_reward.py`)."""
    from math_verify import parse, verify

    gold_parsed = parse("$" + gold + "$", parsing_timeout=None)
    pred_parsed = parse(text, parsing_timeout=None) if gold_parsed else []
    if not gold_parsed or not pred_parsed:
        return 0.0, "parse_failure"
    return (1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=None) else 0.0), "ok"


def _released_verdict(gold: str, text: str) -> tuple[float, str]:
    """The released evaluation's verdict on a solution text: `_whole_text_verdict`; when that says wrong, the OAT
    grader (`trapo.eval.oat_grader.boxed_reward`)."""
    from trapo.eval.oat_grader import boxed_reward

    score, status = _whole_text_verdict(gold, text)
    if score:
        return score, status
    return (1.0 if boxed_reward(text, gold) else 0.0), "ok"


def score_one(gold: str | None, pred: str, timeout: float, grading: str = "trapo") -> tuple[float, str]:
    """(score, status) for one completion, status in ok | parse_failure | timeout | error. Never raises.

    ``grading="trapo"``: Math-Verify on ``pred`` (the last box) against ``gold`` (`gold_text`); ``"whole"``: the
    released training reward (`_whole_text_verdict`) and ``"released"``: the released evaluation
    (`_released_verdict`), both on the whole solution text ``pred`` against the raw answer ``gold``.

    The alarm covers gold parse + prediction parse + verify together (Math-Verify's own timeouts apply to each
    comparison separately, and are turned off here because their ``signal.alarm(0)`` would cancel this alarm). Only
    the main thread can own SIGALRM; elsewhere (in-process mode called from a thread) this runs without a timeout.
    """
    from math_verify import parse, verify

    use_alarm = timeout > 0 and threading.current_thread() is threading.main_thread()
    previous = None
    try:
        if use_alarm:
            previous = signal.signal(signal.SIGALRM, _raise_timeout)
            signal.setitimer(signal.ITIMER_REAL, timeout)
        if grading in ("released", "whole"):
            if not gold:
                return 0.0, "parse_failure"
            return _released_verdict(gold, pred) if grading == "released" else _whole_text_verdict(gold, pred)
        gold_parsed = _parse_gold(gold) if gold else []
        pred_parsed = parse(pred, parsing_timeout=None) if gold_parsed else []
        if not gold_parsed or not pred_parsed:
            return 0.0, "parse_failure"
        return (1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=None) else 0.0), "ok"
    except _ItemTimeout:
        return 0.0, "timeout"
    except Exception:
        return 0.0, "error"
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
