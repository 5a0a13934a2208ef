"""End to end: the commands users run, on a tiny model built in a temp dir."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import ROOT, make_rows, run_cli, run_main

# each trains the tiny model: through `torchx run`, torchrun, or in this process (run_main)
pytestmark = pytest.mark.slow

TORCHX = [sys.executable, "-m", "torchx.cli.main", "run", "-s", "local_cwd"]


def torchx_run(*args, timeout=600):
    out = subprocess.run([*TORCHX, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0 and "SUCCEEDED" in out.stderr + out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def eval_dir(run: Path, split: str = "test") -> Path:
    (found,) = run.glob(f"eval-files-{split}-*")  # named after the data config's hash
    return found


def final_weights(run: Path) -> dict:
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    return torch.load(ckpts[-1], weights_only=False)["model"]


def test_two_process_ddp_on_cpu(train_args, tmp_path):
    torchx_run("components/train.py:train", "--nproc_per_node", "2", "--", *train_args, "trainer.log_every=1")
    ckpt = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)
    # 120 examples / 16 = 8 batches per epoch, 4 per rank: 4 epochs = 16 steps
    assert ckpt["world_size"] == 2 and ckpt["state"]["step"] == 16 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # each rank its own dropout
    losses = [h["train_loss"] for h in ckpt["state"]["history"] if "train_loss" in h]
    assert len(losses) == 16 and sum(losses[-4:]) < sum(losses[:4])


def test_kill_9_and_resume_matches_uninterrupted_run(train_args, tmp_path):
    args = [a for a in train_args if not a.startswith("output_dir=")] + [
        "trainer.epochs=10",
        "trainer.save_every=10",
        "trainer.eval_every=20",
    ]
    assert run_main("train", *args, f"output_dir={tmp_path / 'straight'}").returncode == 0

    resumed = tmp_path / "resumed"
    cmd = [sys.executable, str(ROOT / "run.py"), "train", *args, f"output_dir={resumed}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((resumed / "checkpoints").glob("step_*.pt")) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = sorted((resumed / "checkpoints").glob("step_*.pt"))
    assert first and first[-1].name < "step_00000080.pt" and not (resumed / "metrics.json").exists()

    out = run_cli("train", *args, f"output_dir={resumed}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming" in out.stdout + out.stderr
    a, b = final_weights(tmp_path / "straight"), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hist = json.loads((resumed / "metrics.json").read_text())
    assert hist["steps"] == 80


def test_relaunching_a_finished_run_does_no_more_steps(train_args, tmp_path):
    assert run_main("train", *train_args).returncode == 0
    before = final_weights(tmp_path / "run")
    out = run_main("train", *train_args)
    assert out.returncode == 0 and "resuming" in out.stdout + out.stderr
    after = final_weights(tmp_path / "run")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_multi_label_thresholds_saved_and_used(tiny_model, tmp_path):
    rows = make_rows(150, 0)
    for i, r in enumerate(rows):  # a second label on every third example
        r["labels"] = [r["label"]] + (["urgent"] if i % 3 == 0 else [])
        if i % 3 == 0:
            r["text"] += " asap urgent now"
    data = tmp_path / "ml.jsonl"
    pd.DataFrame(rows)[["text", "labels"]].to_json(data, orient="records", lines=True)
    run = tmp_path / "run"
    out = run_main(
        "train",
        "task=multi_label",
        "model.name=tiny",
        f"model.name_or_path={tiny_model}",
        "data=files",
        f"data.train={data}",
        "data.label_column=labels",
        "trainer.epochs=6",
        "trainer.batch_size=16",
        "trainer.precision=fp32",
        "optim.lr=5e-3",
        "optim.warmup_fraction=0",
        f"output_dir={run}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert set(config["label_thresholds"]) == {"billing", "shipping", "technical", "urgent"}
    assert any(t != 0.5 for t in config["label_thresholds"].values())

    out = run_main(
        "evaluate", f"checkpoint={run}/model", "data=files", f"data.train={data}", "data.label_column=labels"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((eval_dir(run) / "metrics.json").read_text())
    assert result["thresholds"] == [config["label_thresholds"][l] for l in sorted(config["label_thresholds"])]
    assert result["examples"] == round(0.15 * 150) and result["f1_micro"] > 0.5
    assert (eval_dir(run) / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_sentence_pairs(tiny_model, tmp_path):
    rows = [
        {
            "premise": r["text"],
            "hypothesis": f"this is about {r['label']}" if i % 2 else "this is about weather",
            "label": "yes" if i % 2 else "no",
        }
        for i, r in enumerate(make_rows(96, 3))
    ]
    data = tmp_path / "pairs.tsv"
    pd.DataFrame(rows).to_csv(data, sep="\t", index=False)
    out = run_main(
        "train",
        "model.name=tiny",
        f"model.name_or_path={tiny_model}",
        "data=files",
        f"data.train={data}",
        "data.text_column=premise",
        "data.text_pair_column=hypothesis",
        "trainer.epochs=6",
        "trainer.batch_size=16",
        "trainer.precision=fp32",
        "optim.lr=5e-3",
        "optim.warmup_fraction=0",
        f"output_dir={tmp_path / 'run'}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["validation"]["accuracy"] > 0.8


def test_relaunch_with_another_config_is_refused_and_evaluations_never_overwrite(train_args, tiny_data, tmp_path):
    run = tmp_path / "run"
    assert run_main("train", *train_args, "trainer.max_steps=2").returncode == 0
    config = (run / "config.yaml").read_bytes()
    out = run_main("train", *train_args, "trainer.max_steps=2", "optim.lr=1e-3")
    assert out.returncode == 2 and "optim.lr" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert (run / "config.yaml").read_bytes() == config
    assert (
        run_main("train", *train_args, "trainer.max_steps=2", "trainer.log_every=1").returncode == 0
    )  # same run: resumes

    # only the test file: evaluation needs no training data
    alone = run_main(
        "evaluate",
        f"checkpoint={run}/model",
        "data=files",
        f"data.test={tiny_data['test']}",
        f"output_dir={tmp_path / 'e0'}",
    )
    assert alone.returncode == 0, alone.stderr[-2000:]
    base = ["data=files", f"data.train={tiny_data['train']}"]
    # the run directory stands for its model/
    assert run_main("evaluate", f"checkpoint={run}", *base, f"data.test={tiny_data['test']}").returncode == 0
    first = eval_dir(run)
    metrics = (first / "metrics.json").read_bytes()
    assert (
        run_main("evaluate", f"checkpoint={run}/model", *base, f"data.test={tiny_data['validation']}").returncode == 0
    )
    assert len(list(run.glob("eval-files-test-*"))) == 2 and (first / "metrics.json").read_bytes() == metrics
    again = run_main("evaluate", f"checkpoint={run}", *base, f"data.test={tiny_data['test']}")
    assert again.returncode == 2 and "overwrite=true" in again.stderr
    assert (
        run_main("evaluate", f"checkpoint={run}", *base, f"data.test={tiny_data['test']}", "overwrite=true").returncode
        == 0
    )


def test_a_failure_during_work_is_one_line_from_run_py_and_from_torchx(train_args):
    """A library's error inside the recipe (FlashAttention 2 on a CPU machine): exit 1 and one line that says how to see
    the traceback; under torchx, the worker's line once (rank 0) and launcher.job.elastic's line for the failed rank."""
    failing = [*train_args, "model.attn_implementation=flash_attention_2"]
    out = run_cli("train", *failing)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: ImportError: FlashAttention2") and line.endswith(
        "(rerun with --verbose for the traceback)"
    )

    job = subprocess.run(
        [*TORCHX, "components/train.py:train", "--nproc_per_node", "2", "--", *failing],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    both = job.stdout + job.stderr
    assert job.returncode != 0 and "Traceback" not in both and "Job finished: FAILED" in both, both[-4000:]
    worker = [line for line in both.splitlines() if "]:error: " in line]
    assert len(worker) == 1 and "error: ImportError: FlashAttention2" in worker[0], both[-4000:]
    assert re.search(r"^train/0 error: run\.py failed on rank [01] with exit code 1$", both, re.M), both[-4000:]
