"""torchrun, with a failed worker reported in one line instead of torchrun's traceback.

    python3 -m launcher.elastic [torchrun arguments] run.py <command> [overrides]

The worker has already printed its own `error: ...` line; this exits with the worker's code.
"""
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run


def main() -> None:
    try:
        run(get_args_parser().parse_args())
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        print(f"error: {e.name} failed on rank {rank} with exit code {failure.exitcode}", file=sys.stderr)
        sys.exit(failure.exitcode if 0 < failure.exitcode < 256 else 1)


if __name__ == "__main__":
    main()
