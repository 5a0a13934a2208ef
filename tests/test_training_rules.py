"""The trainer's promises: the best model is the one kept, early stopping stops, gradient accumulation is the larger
batch, keep_checkpoints prunes. In-process runs of the tiny model (run_main)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_main
from tests.test_bad_input_table import override

pytestmark = pytest.mark.slow  # training runs, a few seconds each


def trained(args) -> dict:
    out = run_main("train", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(
        (Path(next(a for a in args if a.startswith("output_dir=")).split("=", 1)[1]) / "metrics.json").read_text()
    )


def checkpoints(run: Path) -> dict:
    return {int(p.stem.split("_")[1]): p for p in sorted((run / "checkpoints").glob("step_*.pt"))}


def test_the_model_kept_is_the_best_validation_step(train_args, tmp_path):
    run = tmp_path / "run"
    args = override(
        train_args, "trainer.eval_every=2", "trainer.save_every=2", "trainer.keep_checkpoints=100", "optim.lr=2e-2"
    )
    metrics = trained(args)
    evals = [
        h
        for h in torch.load(checkpoints(run)[metrics["steps"]], weights_only=False)["state"]["history"]
        if "eval_accuracy" in h
    ]
    best = max(evals, key=lambda h: h["eval_accuracy"])  # the first of equals: a later tie is no improvement
    assert metrics["best_step"] == best["step"] and metrics["best_value"] == best["eval_accuracy"]
    assert best["step"] != metrics["steps"], "the last step was the best: this run cannot tell best from last"
    kept = load_file(run / "model" / "model.safetensors")
    at_best = torch.load(checkpoints(run)[best["step"]], weights_only=False)["model"]
    last = torch.load(checkpoints(run)[metrics["steps"]], weights_only=False)["model"]
    name = "classifier.weight"
    assert torch.equal(kept[name], at_best[name]) and not torch.equal(kept[name], last[name])


def test_early_stopping_ends_the_run_after_patience_evaluations_without_improvement(train_args, tmp_path):
    # at lr 1e-12 nothing improves after the first evaluation: it stops after 1 + patience evaluations
    args = override(train_args, "trainer.eval_every=1", "trainer.early_stopping_patience=2", "optim.lr=1e-12")
    metrics = trained(args)
    assert metrics["early_stopped"] and metrics["steps"] == 3 and metrics["best_step"] == 1  # of 32 planned


def test_gradient_accumulation_equals_the_larger_batch(train_args, tmp_path):
    """2 x 8 examples accumulated take the same optimizer step as one batch of the same 16."""
    same = ["trainer.max_steps=1", "trainer.group_by_length=false", "model.dropout=0", "optim.warmup_fraction=0"]
    big = override(train_args, *same, "trainer.batch_size=16", f"output_dir={tmp_path / 'big'}")
    accumulated = override(
        train_args,
        *same,
        "trainer.batch_size=8",
        "trainer.grad_accum_steps=2",
        f"output_dir={tmp_path / 'accumulated'}",
    )
    trained(big), trained(accumulated)
    a = torch.load(checkpoints(tmp_path / "big")[1], weights_only=False)["model"]
    b = torch.load(checkpoints(tmp_path / "accumulated")[1], weights_only=False)["model"]
    start = load_file(
        Path(next(x for x in train_args if x.startswith("model.name_or_path=")).split("=", 1)[1]) / "model.safetensors"
    )
    moved = [k for k in a if k.startswith("bert.") and not torch.equal(a[k], start[k.removeprefix("bert.")])]
    assert moved, "the step changed no encoder weight"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_keep_checkpoints_keeps_the_newest(train_args, tmp_path):
    trained(override(train_args, "trainer.max_steps=5", "trainer.save_every=1", "trainer.keep_checkpoints=2"))
    assert sorted(checkpoints(tmp_path / "run")) == [4, 5]
