"""torchrun, with a failed worker reported in one line instead of torchrun's traceback.

    python3 -m launcher.job.elastic [torchrun arguments] run.py <command> [overrides]

The worker has already printed its own `error: ...` line; this exits with the worker's code, so a
worker that stopped on a signal after checkpointing (PREEMPTED) makes the Slurm script requeue.
torchrun forwards SIGTERM to its workers but dies of SIGUSR1 (Slurm's --signal before the time
limit), so the agent passes SIGUSR1 on to its children instead.

A multi-node `--rdzv_endpoint HOST:0` becomes HOST:job_port(--rdzv_id) (launcher/job/ports.py): every
replica derives the same port from the job id, and two jobs on one node do not collide. On one node
(`--nnodes 1`) port 0 stays: the c10d store takes a free port, as torchrun does.
"""

import os
import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, parse_min_max_nnodes, run

from launcher.job.ports import resolve


def _children() -> list:
    me = str(os.getpid())
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:  # "pid (comm) state ppid ...": comm may hold spaces
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        pids.append(int(entry))
            except (OSError, IndexError):
                pass
    return pids


def _forward(signum, frame) -> None:
    for pid in _children():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def parse_args(argv=None):
    """torchrun's arguments, a multi-node endpoint of port 0 given the port of its job."""
    args = get_args_parser().parse_args(argv)
    if parse_min_max_nnodes(args.nnodes)[1] > 1:
        args.rdzv_endpoint = resolve(args.rdzv_endpoint, args.rdzv_id)
    return args


def main() -> None:
    signal.signal(signal.SIGUSR1, _forward)
    try:
        run(parse_args())
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        print(f"error: {e.name} failed on rank {rank} with exit code {failure.exitcode}", file=sys.stderr)
        sys.exit(failure.exitcode if 0 < failure.exitcode < 256 else 1)
    except SignalException as e:  # SIGTERM: torchrun gave its workers time to checkpoint, then stopped
        print(f"error: stopped by {signal.Signals(e.sigval).name}", file=sys.stderr)
        sys.exit(128 + e.sigval)


if __name__ == "__main__":
    main()
