"""Training checkpoints: one file per step, written under a temporary name and renamed when complete.

A run killed at any moment (kill -9 included) leaves only complete `step_*.pt` files behind,
so the next launch resumes from the newest of them.
"""
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional

import fsspec
import torch

from recipes import storage
from recipes.errors import RecipeError

PATTERN = re.compile(r"step_(\d+)\.pt$")


class RunDir:
    """The run's output directory. Writers use `local`; `publish` copies finished files to a remote URL."""

    def __init__(self, url: str):
        self.url = url
        self.remote = storage.is_remote(url)
        self.local = storage.staging_dir(url) if self.remote else Path(url)

    def path(self, *parts: str) -> Path:
        return self.local.joinpath(*parts)

    def uri(self, *parts: str) -> str:
        return storage.join(self.url, *parts)

    def publish(self, *parts: str) -> None:
        if self.remote:
            storage.upload(self.path(*parts), self.uri(*parts))

    def write_text(self, name: str, text: str) -> None:
        """Write a file under a temporary name, rename it, publish it."""
        tmp = self.path(f".{name}.tmp")
        tmp.write_text(text)
        tmp.replace(self.path(name))
        self.publish(name)

    def ensure_writable(self) -> None:
        """Fail before any work, not after it, when the outputs cannot be written."""
        try:
            self.local.mkdir(parents=True, exist_ok=True)
            probe = self.path(".write-test")
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise RecipeError(f"output_dir {self.url}: not writable ({e.strerror or e})") from None


def _steps(run: RunDir) -> Dict[int, str]:
    if run.remote:
        fs, root = fsspec.core.url_to_fs(run.uri("checkpoints"))
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
        fs, path = fsspec.core.url_to_fs(run.uri("checkpoints", name))
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
    return torch.load(local, map_location="cpu", weights_only=False)
