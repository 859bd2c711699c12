"""Named crash points, so fault-injection tests can kill a run at an exact instant.

With `AGEMEM_KILL_AT=<point>:<n>` in the environment, the process sends itself SIGKILL the n-th
time (1-based) it passes `point(<point>)`: no handler, no cleanup, no flush, exactly as a
preempted VM or the OOM killer ends it. Unset (always, outside those tests), `point` is one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "AGEMEM_KILL_AT"
_passed: Counter[str] = Counter()


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _passed[name] += 1
    if _passed[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
