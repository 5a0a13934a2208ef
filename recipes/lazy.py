"""Modules imported when first used.

The submit side (components, `torchx run --dryrun`) imports the task modules for their Config, check and
OPTIONS alone; the task modules reach torch, transformers and the rest through `lazy`, so that costs
nothing there.
"""

import importlib


class lazy:
    """`torch = lazy("torch")`: the module `torch`, imported the first time one of its attributes is read."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"lazy({self._name!r})"
