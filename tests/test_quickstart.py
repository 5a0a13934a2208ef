"""The README's quickstart, as a new user runs it: its `torchx run` commands, read from README.md, in a copy of the
checkout (so a run of yours in outputs/ is left alone): the default train job, evaluate, batch_infer on test.csv."""

import json
import re
import shlex
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # fine-tunes the packaged MiniLM: about a minute on 2 cores

SHIPPED = ("components", "launcher", "recipes", "conf", "data", "run.py", ".torchxconfig", "pyproject.toml")
LABELS = {"billing", "shipping", "technical", "account"}


def quickstart_commands() -> list:
    """Every `torchx run ...` command of the README's Quickstart section, continuation lines joined."""
    section = re.search(r"^## Quickstart\n(.*?)^## ", (ROOT / "README.md").read_text(), re.M | re.S).group(1)
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith("torchx run")]


def test_the_readme_commands_are_the_three_components():
    commands = quickstart_commands()
    assert [c[2] for c in commands] == [
        "components/train.py:train",
        "components/evaluate.py:evaluate",
        "components/infer.py:batch_infer",
    ]


def test_quickstart_as_the_readme_says(tmp_path):
    checkout = tmp_path / "text-recipes"
    checkout.mkdir()
    for name in SHIPPED:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, checkout / name)
    for command in quickstart_commands():
        out = subprocess.run(
            [sys.executable, "-m", "torchx.cli.main", *command[1:]],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=900,
        )
        both = out.stdout + out.stderr
        assert out.returncode == 0 and "Job finished: SUCCEEDED" in both, f"{shlex.join(command)}\n{both[-4000:]}"
        assert "Traceback" not in both

    run = checkout / "outputs" / "minilm-support_tickets"
    # a model directory any transformers user can load, with its label maps
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    AutoTokenizer.from_pretrained(run / "model")
    assert set(model.config.id2label.values()) == LABELS
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 88 and metrics["validation"]["accuracy"] > 0.8  # chance: 0.25
    for name in ("config.yaml", "training_curve.png"):
        assert (run / name).stat().st_size > 0
    assert list((run / "tb").glob("events.out.tfevents.*"))

    (evaluation,) = run.glob("eval-support_tickets-test-*")
    result = json.loads((evaluation / "metrics.json").read_text())
    assert result["examples"] == 72 and result["accuracy"] > 0.8 and set(result["per_class"]) == LABELS
    for key in ("precision_micro", "recall_macro", "f1_macro", "f1_micro"):
        assert 0 <= result[key] <= 1
    predictions = [json.loads(line) for line in (evaluation / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 72 and {p["prediction"] for p in predictions} <= LABELS
    assert (evaluation / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    scored = pd.read_parquet(checkout / "outputs" / "scored")
    test = pd.read_csv(checkout / "data" / "support_tickets" / "test.csv")
    assert sorted(scored.id) == sorted(f"test.csv:{i + 2}" for i in range(len(test)))  # every row once, by file:line
    agree = (
        scored.set_index("id").loc[[f"test.csv:{i + 2}" for i in range(len(test))]].label.values == test.label.values
    )
    assert agree.mean() == pytest.approx(result["accuracy"], abs=1 / 72)  # batch inference decides as evaluate does
    assert json.loads((checkout / "outputs" / "scored" / "_SUCCESS").read_text())["predicted"] == 72
