"""A command's config: conf/<command>.yaml composed with the overrides, typed, checked, in one line on failure.

`run.py` and the components both compose here, so what a component can check when it
builds the AppDef fails at `torchx run --dryrun` time, not after the job waited for nodes.
"""

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Optional, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from recipes import tasks
from recipes.config import CHECKS, SCHEMAS
from recipes.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def _pkgdir(package: str, sub: str = "") -> str:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError(f"Python package {package!r} is not installed (pip install {package.replace('_', '-')})")
    return str(Path(spec.submodule_search_locations[0], sub))


def _required(key: str, what: str) -> None:
    raise RecipeError(f"{key}: required; set {key}=<{what}>")


RESOLVERS = {
    "required": _required,  # a key a config group must be given
    "pkgdir": _pkgdir,  # a directory inside an installed package, e.g. a packaged model
    "repo": lambda path: str(ROOT / path),  # a file shipped with this project
    "sanitize": lambda s: re.sub(r"[^A-Za-z0-9._-]+", "-", str(s)).strip("-"),
    # "-<n>procs" under torchrun with n > 1 processes: runs of different sizes cannot share checkpoints
    "procs_suffix": lambda: "" if int(os.environ.get("WORLD_SIZE", "1")) <= 1 else f"-{os.environ['WORLD_SIZE']}procs",
}


def schema(command: str):
    """The dataclass of conf/<command>.yaml; infer's task node holds every task's OPTIONS (recipes/tasks)."""
    if command != "infer":
        return SCHEMAS[command]
    options = tasks.options_schema()
    return dataclasses.make_dataclass(
        "InferConfig", [("task", options, dataclasses.field(default_factory=options))], bases=(SCHEMAS[command],)
    )


def register() -> None:
    store = ConfigStore.instance()
    for command in SCHEMAS:
        store.store(name=f"{command}_schema", node=schema(command))


def compose(command: str, overrides: Sequence[str]) -> DictConfig:
    """The checked config of `command`; raises RecipeError with one line naming the key, value or override."""
    register()
    for name, fn in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, fn, replace=True)
    _parse(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name=command):
            cfg = hydra_compose(config_name=command, overrides=list(overrides))
    except Exception as e:  # Hydra wraps OmegaConf's errors: report the cause in one line
        raise RecipeError(_composition_error(e, command)) from None
    _reject_unknown_keys(cfg, schema(command), "")
    if command == "train":
        cfg.task = tasks.typed(cfg.task)
    _reject_non_finite(OmegaConf.to_container(cfg, resolve=False), "")
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise RecipeError(f"{missing[0]}: required; set {missing[0]}=...")
        CHECKS[command](cfg)
        if command == "train":
            tasks.check(cfg.task)
        elif command == "infer":
            tasks.check_options(cfg.task)
    except OmegaConfBaseException as e:  # an interpolation that does not resolve; a resolver's own error as is
        msg = re.sub(r"^RecipeError raised while resolving interpolation: ", "", getattr(e, "msg", None) or str(e))
        raise RecipeError(_first_line(msg)) from None
    return cfg


def _parse(overrides: Sequence[str]) -> None:
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except Exception:
            raise RecipeError(
                f"{override!r}: not a Hydra override; expected key=value (e.g. trainer.max_steps=100)"
            ) from None


def _composition_error(e: Exception, command: str) -> str:
    cause = e.__cause__ or e
    key = getattr(cause, "full_key", None)
    msg = getattr(cause, "msg", None) or str(cause)
    if key and ("not in" in msg or "not found" in msg):
        return f"{key}: unknown key; {_allowed(command, key)}"
    converted = re.search(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", msg)
    if key and converted:
        value, kind = converted.groups()
        kind = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}.get(
            kind, kind
        )
        return f"{key}={value!r}: expected {kind}"
    group = re.search(r"Could not find '([\w/]+)/([^']+)'", str(e))
    if group:
        name, option = group.groups()
        options = sorted(p.stem for p in (CONF / name).glob("*.yaml") if p.stem != "base")
        return f"{name}={option}: no such {name} config; options: {', '.join(options)}"
    if key:
        return f"{key}: {_first_line(msg)}"
    return _first_line(str(e))


def _allowed(command: str, full_key: str) -> str:
    node = schema(command)
    parts = full_key.split(".")[:-1]
    for part in parts:
        field = {f.name: f for f in dataclasses.fields(node)}.get(part)
        if field is None or not dataclasses.is_dataclass(field.type):
            break
        node = field.type
    where = ".".join(parts) or command
    return f"keys of {where}: {', '.join(f.name for f in dataclasses.fields(node))}"


def _reject_unknown_keys(node: DictConfig, schema, prefix: str) -> None:
    """Keys added with +key=value bypass Hydra's schema check; they are typos like any other."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node.keys():
        full = f"{prefix}{key}"
        if key not in fields:
            raise RecipeError(f"{full}: unknown key; keys of {prefix.rstrip('.') or 'the config'}: {', '.join(fields)}")
        if dataclasses.is_dataclass(fields[key].type):
            _reject_unknown_keys(node[key], fields[key].type, f"{full}.")


def _reject_non_finite(tree, prefix: str) -> None:
    """inf and nan pass every range check (nan compares false both ways): no setting takes them."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for key, value in items:
        full = f"{prefix}.{key}".lstrip(".") if isinstance(tree, dict) else f"{prefix}[{key}]"
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"{full}={value}: expected a finite number")
        _reject_non_finite(value, full)


def _first_line(text: Optional[str]) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "invalid configuration"
