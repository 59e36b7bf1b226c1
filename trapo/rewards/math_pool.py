"""The subprocess pool behind `trapo.rewards.math.MathReward`: each completion is scored in a worker that can be
killed (see that module's docstring for why), one JSON line per request and answer."""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
import weakref
from collections import deque

from trapo.rewards.verify import _parse_gold, score_one

_KILL_GRACE_S = 1.0  # the parent kills a worker this long after the worker's own alarm should have fired
_STARTUP_TIMEOUT_S = 120.0  # a fresh worker imports sympy: seconds on a loaded machine, never minutes


def _serve() -> None:
    """Worker loop: one JSON request per stdin line ``[gold, pred, timeout(, grading)]``, one ``[score, status]``
    line back."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a library that prints must not corrupt the protocol
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; a worker ends when its stdin closes
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _parse_gold("\\boxed{1}")  # import and warm sympy before saying ready
    channel.write("ready\n")
    for line in sys.stdin:
        try:
            result = score_one(*json.loads(line))
        except BaseException:  # includes an alarm landing between the scoring and its cleanup
            result = (0.0, "error")
        channel.write(json.dumps(result) + "\n")


_WORKER_CODE = "import sys; sys.path[:0] = {path!r}; from trapo.rewards.math_pool import _serve; _serve()"


# --------------------------------------------------------------------------------------------- pool (parent side)
class _Worker:
    def __init__(self):
        code = _WORKER_CODE.format(path=[p for p in sys.path if p])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.ready = False
        self.item: int | None = None
        self.deadline = time.monotonic() + _STARTUP_TIMEOUT_S

    def send(self, item: int, request: list, deadline: float) -> None:
        self.item, self.deadline = item, deadline
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        for close in (self.proc.kill, self.proc.stdin.close, self.proc.stdout.close, self.proc.wait):
            try:
                close()
            except Exception:
                pass


class _Pool:
    """Worker subprocesses, each scoring one item at a time so the parent knows exactly when each item started."""

    def __init__(self, size: int):
        self.pid = os.getpid()
        self.workers = [_Worker() for _ in range(size)]

    def close(self) -> None:
        if os.getpid() == self.pid:  # a forked child must not kill its parent's workers
            for worker in self.workers:
                worker.kill()
        self.workers = []

    def run(self, requests: list[list], timeout: float) -> list[tuple[float, str]]:
        """Score every request; an item past ``timeout + grace`` gets (0, "timeout") and its worker is replaced."""
        results: list[tuple[float, str] | None] = [None] * len(requests)
        todo = deque(range(len(requests)))
        for k, worker in enumerate(self.workers):  # still busy from a call that was interrupted: its answer is stale
            if worker.item is not None:
                worker.kill()
                self.workers[k] = _Worker()
        while todo or any(w.item is not None for w in self.workers):
            for k, worker in enumerate(self.workers):
                if worker.ready and worker.item is None and todo:
                    i = todo.popleft()
                    try:
                        worker.send(i, requests[i], time.monotonic() + timeout + _KILL_GRACE_S)
                    except OSError:  # it died while idle (e.g. OOM killer): replace it, the item waits
                        todo.appendleft(i)
                        worker.kill()
                        self.workers[k] = _Worker()
            active = [w for w in self.workers if not w.ready or w.item is not None]
            wait = max(0.0, min(w.deadline for w in active) - time.monotonic())
            readable, _, _ = select.select([w.proc.stdout for w in active], [], [], wait)
            for k, worker in enumerate(self.workers):
                if worker not in active:
                    continue
                line = worker.proc.stdout.readline() if worker.proc.stdout in readable else None
                if line and not worker.ready:
                    worker.ready = True
                elif line:
                    results[worker.item], worker.item = tuple(json.loads(line)), None
                elif line == "" or time.monotonic() > worker.deadline:  # died, or hung where no alarm reaches
                    if not worker.ready:
                        raise RuntimeError("math reward worker failed to start (see its stderr above)")
                    results[worker.item] = (0.0, "timeout" if line is None else "error")
                    worker.kill()
                    self.workers[k] = _Worker()
        return results


_POOLS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_pools() -> None:
    for reward in list(_POOLS):
        reward.close()
