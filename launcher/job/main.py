"""`python run.py <command> [key=value ...]`: compose and check the config, then run the recipe.

Errors are one line on stderr: exit 2 for bad input or configuration (found before any work),
1 for a failure during work. `--verbose` (or TEXT_RECIPES_VERBOSE=1) adds the traceback.
"""

import importlib
import logging
import os
import sys
import traceback

from omegaconf import OmegaConf

from launcher.compose import compose
from recipes.errors import PREEMPTED, Preempted, RecipeError
from recipes.stopping import stop_on_signals

COMMANDS = ("train", "evaluate", "infer")
USAGE = f"""usage: python run.py {{{",".join(COMMANDS)}}} [key=value ...] [--cfg job [--resolve]] [--verbose]

  key=value    Hydra overrides of conf/<command>.yaml, e.g. trainer.max_steps=100 data=files data.train=my.csv
  --cfg job    print the composed config and exit (--resolve: with interpolations resolved)
  --verbose    print the traceback of an error (also: TEXT_RECIPES_VERBOSE=1)"""


def _fail(message: str, code: int, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    if os.environ.get("RANK", "0") == "0":  # one report per job, not one per process
        print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _setup_logging() -> None:
    rank0 = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        stream=sys.stdout, level=logging.WARNING, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    logging.getLogger("text_recipes").setLevel(logging.INFO if rank0 else logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars are the ones to watch


def _run(command: str, cfg) -> None:
    if command == "infer":  # Ray runs the processes: no torch process group
        from recipes.infer import infer

        infer(cfg)
        return
    from recipes.runtime import init_runtime

    rt = init_runtime(cfg.trainer.device, "trainer.device") if command == "train" else init_runtime(cfg.device)
    try:
        getattr(importlib.import_module(f"recipes.{command}"), command)(cfg, rt)
    finally:
        rt.close()


def main(argv=None) -> None:
    args = list(sys.argv[1:] if argv is None else argv[1:])
    verbose = "--verbose" in args or os.environ.get("TEXT_RECIPES_VERBOSE", "") not in ("", "0")
    if not args or "-h" in args or "--help" in args:
        print(USAGE, file=sys.stdout if args else sys.stderr)
        sys.exit(0 if args else 2)
    if args[0] not in COMMANDS:
        _fail(f"unknown command {args[0]!r}; expected one of {', '.join(COMMANDS)} (python run.py --help)", 2, False)
    command, rest = args[0], [a for a in args[1:] if a != "--verbose"]
    show = "--cfg" in rest
    if show:
        at = rest.index("--cfg")
        if rest[at + 1 : at + 2] != ["job"]:
            _fail("--cfg: expected --cfg job", 2, False)
        del rest[at : at + 2]
    resolve = "--resolve" in rest
    if resolve and not show:
        _fail("--resolve goes with --cfg job (python run.py train --cfg job --resolve)", 2, False)
    rest = [a for a in rest if a != "--resolve"]
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        _fail(f"{unknown[0]}: unknown option; see python run.py --help", 2, False)
    with stop_on_signals(checkpoints=command == "train" and not show, restore=argv is not None):
        _main(command, rest, show, resolve, verbose)


def _main(command: str, rest: list, show: bool, resolve: bool, verbose: bool) -> None:
    try:
        cfg = compose(command, rest)
        if show:
            print(OmegaConf.to_yaml(cfg, resolve=resolve), end="")
            return
        _setup_logging()
        _run(command, cfg)
    except RecipeError as e:
        _fail(str(e), 2, verbose)
    except Preempted as e:
        _fail(f"stopped: {e}", PREEMPTED, False)
    except KeyboardInterrupt:
        _fail("interrupted", 130, verbose)
    except Exception as e:  # a failure during work: still one line, the traceback on request
        hint = "" if verbose else " (rerun with --verbose for the traceback)"
        _fail(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}{hint}", 1, verbose)
