"""SIGTERM (preemption, scancel, the time limit) and SIGUSR1 (Slurm's warning before the time limit): a job asked
to stop, from the moment its process starts (`run.py` installs this first, before the slow imports).

Training finishes its step, writes a checkpoint and exits with PREEMPTED: the handler only records the
signal, so a checkpoint is never cut in half, and a signal during setup stops the run after its first
step. Evaluation and batch inference have nothing to save (inference has committed its finished blocks):
they stop at once with PREEMPTED, and the same command redoes what was not finished.
"""

import signal
from contextlib import contextmanager
from typing import Iterator, Optional

from recipes.errors import Preempted

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
received: Optional[str] = None  # the first signal's name
_at_once = False


def _handle(signum, frame) -> None:
    global received
    first = received is None
    received = received or signal.Signals(signum).name
    if _at_once and first:
        raise Preempted(f"{received}: stopped before the end; the same command does the rest")


@contextmanager
def stop_on_signals(checkpoints: bool, restore: bool = True) -> Iterator[None]:
    """`checkpoints`: the work looks at `received` and stops itself; else a signal stops it where it is.

    `restore=False` for a process of its own: it keeps recording signals to its very end, so one that comes
    after the work is done (the other ranks still finishing, the interpreter shutting down) does not kill it.
    """
    global received, _at_once
    received, _at_once = None, not checkpoints
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    try:
        yield
    finally:
        _at_once = False
        if restore:
            for s, handler in previous.items():
                signal.signal(s, handler)
