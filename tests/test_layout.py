"""Imports point downward: recipes/ never imports launcher/, and inside recipes/ no module imports one above it."""

import ast
from pathlib import Path

from tests.conftest import ROOT

# lower layers first; a module may import its own layer and those before it
LAYERS = [
    {"errors", "lazy", "config", "storage", "blocks", "plots", "stopping"},
    {"data", "model", "runtime", "devices", "xla", "checkpoint", "predict", "infer_input", "infer_output"},
    {"tasks"},
    {"train", "evaluate", "infer", "infer_predict", "infer_pipeline", "onnx_engine"},
]


def imported(path: Path):
    """Every recipes/launcher module a file imports, `lazy("...")` included."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy" and node.args:
            yield node.args[0].value


def layer(name: str) -> int:
    top = name.split(".")[1] if name.startswith("recipes.") else name
    (found,) = [i for i, names in enumerate(LAYERS) if top in names]
    return found


def test_every_recipes_module_has_a_layer():
    modules = {p.stem for p in (ROOT / "recipes").glob("*.py") if p.stem != "__init__"} | {"tasks"}
    assert modules == set().union(*LAYERS)


def test_imports_point_downward():
    wrong = []
    for path in sorted((ROOT / "recipes").rglob("*.py")):
        own = "tasks" if path.parent.name == "tasks" else path.stem
        for name in imported(path):
            if name.startswith("launcher"):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
            elif name.startswith("recipes.") and own != "__init__" and name.split(".")[1] in set().union(*LAYERS):
                if layer(name) > layer(own):
                    wrong.append(f"{path.relative_to(ROOT)} (layer {layer(own)}) imports {name} (layer {layer(name)})")
    assert not wrong, "\n".join(wrong)
