"""`python run.py <command> [hydra overrides]`: config composition, process group, recipe."""
import importlib.util
import logging
import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from transformers.utils import logging as hf_logging

from launcher.dist import init_runtime
from recipes.config import register
from recipes.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "evaluate")
USAGE = f"usage: python run.py {{{','.join(COMMANDS)}}} [key=value ...] [--cfg job]"


def _pkgdir(package: str, sub: str = "") -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError(f"Python package {package!r} is not installed (pip install {package.replace('_', '-')})")
    return str(Path(spec.submodule_search_locations[0], sub))


def register_resolvers() -> None:
    resolvers = {
        "pkgdir": _pkgdir,  # a directory inside an installed package, e.g. a packaged model
        "repo": lambda path: str(ROOT / path),  # a file shipped with this project
        "sanitize": lambda s: re.sub(r"[^A-Za-z0-9._-]+", "-", str(s)).strip("-"),
    }
    for name, fn in resolvers.items():
        OmegaConf.register_new_resolver(name, fn, replace=True)


def _execute(command: str, cfg: DictConfig) -> None:
    rank0 = os.environ.get("RANK", "0") == "0"
    logging.getLogger().setLevel(logging.WARNING)  # libraries: warnings only
    hf_logging.disable_progress_bar()  # our own progress bars are the ones to watch
    logging.getLogger("text_recipes").setLevel(logging.INFO if rank0 else logging.WARNING)
    rt = None
    try:
        device = cfg.trainer.device if command == "train" else cfg.device
        rt = init_runtime(device)
        if command == "train":
            from recipes.train import train as recipe
        else:
            from recipes.evaluate import evaluate as recipe
        recipe(cfg, rt)
    except RecipeError as e:
        if rank0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if rt is not None:
            rt.close()


def main(argv=None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    command = argv.pop(1)
    sys.argv = argv  # Hydra parses sys.argv
    register()
    register_resolvers()
    hydra.main(config_path=str(ROOT / "conf"), config_name=command, version_base="1.3")(lambda cfg: _execute(command, cfg))()
