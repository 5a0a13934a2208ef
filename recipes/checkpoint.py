"""Training checkpoints: one file per step, written under a temporary name and renamed when complete.

A run killed at any moment (kill -9 included) leaves only complete `step_*.pt` files behind,
so the next launch resumes from the newest of them.
"""

import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import yaml

from recipes import storage
from recipes.errors import RecipeError

PATTERN = re.compile(r"step_(\d+)\.pt$")


class RunDir:
    """The run's output directory. Writers use `local`; `publish` copies finished files to a remote URL."""

    def __init__(self, url: str):
        self.remote = storage.is_remote(url)
        self.url = url if self.remote else os.path.expanduser(url)
        if self.remote:
            storage.check_url(url, "output_dir")
        self.local = storage.staging_dir(url) if self.remote else Path(self.url)

    def path(self, *parts: str) -> Path:
        return self.local.joinpath(*parts)

    def uri(self, *parts: str) -> str:
        return storage.join(self.url, *parts)

    def publish(self, *parts: str) -> None:
        if self.remote:
            storage.upload(self.path(*parts), self.uri(*parts))

    def write(self, name: str, writer: Callable[[str], None]) -> None:
        """`writer(path)` writes the file under a temporary name; renamed when complete, then published."""
        final = self.path(name)
        tmp = final.with_name(f".{final.stem}.tmp{final.suffix}")  # keeps the suffix: matplotlib picks the format by it
        writer(str(tmp))
        tmp.replace(final)
        self.publish(name)

    def write_text(self, name: str, text: str) -> None:
        self.write(name, lambda path: Path(path).write_text(text))

    def entries(self) -> List[str]:
        """Names in the directory; [] if it does not exist. A path that is a file is refused."""
        if self.remote:
            fs, root = storage.filesystem(self.url)
            fs.invalidate_cache(root)  # what another process (a killed run, another job) wrote since it was last listed
            if fs.isfile(root):
                raise RecipeError(f"output_dir {self.url}: is a file; expected a directory")
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)] if fs.isdir(root) else []
        path = Path(self.url)
        if path.exists() and not path.is_dir():
            raise RecipeError(f"output_dir {self.url}: is a file; expected a directory")
        return [p.name for p in path.iterdir()] if path.is_dir() else []

    def read_text(self, name: str) -> str:
        return storage.read_bytes(self.uri(name)).decode()

    def check_writable(self) -> None:
        """Fail before any work, not after it, when the outputs cannot be written; creates nothing."""
        if self.remote:
            return  # written to a local staging directory, uploaded file by file
        path = Path(self.url).absolute()
        while not path.exists():
            path = path.parent
        if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
            raise RecipeError(
                f"output_dir {self.url}: not writable "
                f"({path} is {'not a directory' if not path.is_dir() else 'read-only'})"
            )

    def create(self) -> None:
        self.local.mkdir(parents=True, exist_ok=True)


# What a resumed run may change without changing what it trains.
MAY_CHANGE_ON_RESUME = ("trainer.log_every", "trainer.eval_batch_size", "trainer.device")


def check_run_dir(run: RunDir, config_yaml: str) -> None:
    """A new run starts in a new or empty directory; an existing run resumes only with the same config."""
    names = run.entries()
    if not names:
        return
    if "config.yaml" not in names:
        raise RecipeError(
            f"output_dir {run.url}: not empty and not a text-recipes run (no config.yaml); use a new or empty directory"
        )
    if not _steps(run) and "model" not in names:
        return  # stopped before its first checkpoint: nothing to resume, so any config may start afresh
    old, new = _flat(yaml.safe_load(run.read_text("config.yaml"))), _flat(yaml.safe_load(config_yaml))
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k) and k not in MAY_CHANGE_ON_RESUME]
    if changed:
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise RecipeError(
            f"output_dir {run.url} holds a run with another config ({shown}{more}); "
            "relaunch with its config to resume, or use a new output_dir"
        )


def _flat(tree, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: Dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _steps(run: RunDir) -> Dict[int, str]:
    if run.remote:
        fs, root = storage.filesystem(run.uri("checkpoints"))
        fs.invalidate_cache(root)
        names = fs.ls(root, detail=False) if fs.exists(root) else []
    else:
        folder = run.path("checkpoints")
        names = [str(p) for p in folder.iterdir()] if folder.exists() else []
    found = {}
    for name in names:
        m = PATTERN.search(name.rsplit("/", 1)[-1])
        if m:
            found[int(m.group(1))] = m.group(0)
    return found


def save(run: RunDir, step: int, state: Dict[str, Any], keep: int) -> None:
    folder = run.path("checkpoints")
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}.pt"
    tmp = folder / f".{name}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / name)
    run.publish("checkpoints", name)
    for old in sorted(_steps(run))[:-keep] if keep > 0 else []:
        _remove(run, _steps(run)[old])


def _remove(run: RunDir, name: str) -> None:
    run.path("checkpoints", name).unlink(missing_ok=True)
    if run.remote:
        fs, path = storage.filesystem(run.uri("checkpoints", name))
        fs.rm(path)


def load_latest(run: RunDir) -> Optional[Dict[str, Any]]:
    steps = _steps(run)
    if not steps:
        return None
    name = steps[max(steps)]
    local = run.path("checkpoints", name)
    if run.remote and not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        storage.download(run.uri("checkpoints", name), local)
    try:
        return torch.load(local, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise RecipeError(
            f"{run.uri('checkpoints', name)}: damaged checkpoint ({str(e).strip().splitlines()[0]}); "
            "delete it to resume from an earlier one, or use a new output_dir"
        ) from None
