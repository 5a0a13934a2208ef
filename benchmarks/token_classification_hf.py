"""Inspec keyphrases: Hugging Face Trainer run the way its run_ner example does, beside this recipe's default run.

    python benchmarks/token_classification_hf.py --data ../shared/data/inspec --recipe-run outputs/inspec \\
        [--lr 5e-5 1e-4]

HF side (one fresh process per learning rate): the packaged all-MiniLM-L6-v2 with a token-classification head,
labels on the first sub-token of each word (-100 elsewhere), documents truncated to 256 sub-tokens, batch 16,
3 epochs, linear schedule, seed 42, DataCollatorForTokenClassification: run_ner's defaults. It is scored on the
test split twice with seqeval: as run_ner scores it (the truncated documents only up to where they were cut), and
in full (the words past the cut predicted O, as a user of that model gets them).
Recipe side: `--recipe-run` is the output_dir of `python run.py train data=inspec task=token_classification`;
its model is evaluated on the same test split (full documents, overlapping windows) unless it already was.
Prints one line per run and writes benchmarks/results/token_classification_hf.{json,png}.
"""

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_LENGTH, BATCH, EPOCHS, SEED = 256, 16, 3, 42


def read_conll(path: Path):
    from omegaconf import OmegaConf

    from recipes.data import _read_conll

    df = _read_conll(path.read_text(), str(path), OmegaConf.create({"text_column": "tokens", "label_column": "tags"}))
    return df["tokens"].tolist(), df["tags"].tolist()


def run_hf(data_dir: str, lr: float) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from omegaconf import OmegaConf
    from seqeval.metrics import f1_score, precision_score, recall_score
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    from launcher.compose import compose
    from recipes.model import resolve

    cfg = compose("train", ["data=inspec", "task=token_classification"])
    OmegaConf.resolve(cfg)
    path = resolve(cfg.model.name_or_path)
    train_tokens, train_tags = read_conll(Path(data_dir) / "train.txt")
    test_tokens, test_tags = read_conll(Path(data_dir) / "test.txt")
    labels = sorted({t for doc in train_tags for t in doc})
    label_id = {t: i for i, t in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(tokens, tags):
        enc = tokenizer(tokens, is_split_into_words=True, truncation=True, max_length=MAX_LENGTH)
        out = []
        for i, doc_tags in enumerate(tags):
            previous, ids = None, []
            for word in enc.word_ids(i):
                ids.append(-100 if word is None or word == previous else label_id[doc_tags[word]])
                previous = word
            out.append(ids)
        return Dataset.from_dict(
            {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": out}
        ), enc

    train_ds, _ = encode(train_tokens, train_tags)
    test_ds, test_enc = encode(test_tokens, test_tags)
    torch.manual_seed(SEED)
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_id
    )
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            out,
            per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=64,
            learning_rate=lr,
            num_train_epochs=EPOCHS,
            seed=SEED,
            save_strategy="no",
            report_to=[],
            logging_steps=50,
            use_cpu=True,
            disable_tqdm=False,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorForTokenClassification(tokenizer)
        )
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        logits = trainer.predict(test_ds).predictions
    truncated_pred, truncated_gold, full_pred = [], [], []
    for i, doc_tags in enumerate(test_tags):
        words = {}
        previous = None
        for position, word in enumerate(test_enc.word_ids(i)):
            if word is not None and word != previous:
                words[word] = labels[int(np.argmax(logits[i][position]))]
            previous = word
        seen = sorted(words)
        truncated_pred.append([words[w] for w in seen])
        truncated_gold.append([doc_tags[w] for w in seen])
        full_pred.append([words.get(w, "O") for w in range(len(doc_tags))])
    cut = sum(len(words) < len(tags) for words, tags in zip(truncated_gold, test_tags))

    def scores(gold, pred):
        return {
            "f1": f1_score(gold, pred),
            "precision": precision_score(gold, pred),
            "recall": recall_score(gold, pred),
        }

    return {
        "lr": lr,
        "train_seconds": train_seconds,
        "truncated_documents": cut,
        "as_run_ner": scores(truncated_gold, truncated_pred),
        "full": scores(test_tags, full_pred),
    }


def recipe_scores(run: Path, data_dir: str) -> dict:
    metrics = run / "eval-test" / "metrics.json"
    if not metrics.exists():
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "run.py"),
                "evaluate",
                f"checkpoint={run / 'model'}",
                "data=inspec",
                f"data.train={data_dir}/train.txt",
                f"data.validation={data_dir}/valid.txt",
                f"data.test={data_dir}/test.txt",
                "split=test",
                f"output_dir={run / 'eval-test'}",
            ],
            check=True,
        )
    result = json.loads(metrics.read_text())
    return {"f1": result["f1"], "precision": result["precision"], "recall": result["recall"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="directory holding Inspec's train.txt, valid.txt and test.txt")
    parser.add_argument(
        "--recipe-run", type=Path, required=True, help="output_dir of the recipe's default run on data=inspec"
    )
    parser.add_argument("--lr", type=float, nargs="+", default=[5e-5, 1e-4])
    args = parser.parse_args()
    from benchmarks.machine import cpu_name

    rows = []
    for lr in args.lr:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            r = pool.apply(run_hf, (args.data, lr))
        rows.append(r)
        print(
            f"HF Trainer (run_ner), lr {lr:g}: test entity F1 {r['as_run_ner']['f1']:.3f} as run_ner scores it, "
            f"{r['full']['f1']:.3f} on full documents ({r['truncated_documents']} truncated), "
            f"train {r['train_seconds']:.0f} s",
            flush=True,
        )
    recipe = recipe_scores(args.recipe_run, args.data)
    print(
        f"text-recipes default: test entity F1 {recipe['f1']:.3f} on full documents "
        f"(P {recipe['precision']:.3f}, R {recipe['recall']:.3f})"
    )
    best = max(rows, key=lambda r: r["full"]["f1"])
    print(
        f"best HF setting (lr {best['lr']:g}) {best['full']['f1']:.3f} vs text-recipes {recipe['f1']:.3f}: "
        f"{recipe['f1'] - best['full']['f1']:+.3f}"
    )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "token_classification_hf.json").write_text(
        json.dumps({"machine": cpu_name(), "hf": rows, "recipe": recipe}, indent=2)
    )
    plot(rows, recipe, out / "token_classification_hf.png", cpu_name())


def plot(rows, recipe, path: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"HF run_ner\nlr {r['lr']:g}" for r in rows] + ["text-recipes\ndefault"]
    full = [r["full"]["f1"] for r in rows] + [recipe["f1"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(names, full, color=["#999999"] * len(rows) + ["#1f77b4"])
    ax.bar_label(bars, fmt="%.3f")
    ax.set_ylabel("test entity F1 (full documents)")
    ax.set_title(f"Inspec keyphrases, packaged MiniLM\n{machine}", fontsize=9)
    ax.set_ylim(0, max(full) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
