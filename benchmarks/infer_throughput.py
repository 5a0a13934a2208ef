"""Batch inference throughput on CPU: `run.py infer` vs a Hugging Face pipeline and an in-process loop.

The model is the packaged MiniLM-L6 with a multi-label head fine-tuned on arXiv title+abstract
pairs by this project's own recipe (trained here once with a small step budget, then cached under
outputs/). The input is 2,000 papers that training did not see. In one run:

    (a) transformers.pipeline("text-classification"), batch size 1, and (b) batch size 32
    (c) an in-process loop: rows sorted by length, batch_infer's CPU batch size (16, int8: 8), the recipe's own forward
        (recipes.infer_predict), at fp32, int8 and (where the CPU multiplies bf16 faster) bf16
    (d) python run.py infer with 2 actors x 1 thread and 1 actor x 2 threads, at auto and int8

    (e) the batch_infer component under `torchx run -s local_cwd`, 1 vs 2 replicas (one Ray node each)

Rates count tokenization and prediction. For run.py infer, "end to end" is the whole command
(Ray start, model loading, writing); "excl. Ray start" is its Ray pipeline (actors' model loading
included); "once models are loaded" runs from the first block an actor began to the last one
committed (the manifest's predict_seconds), the rate that matters for large inputs and the one
comparable with the loop, which excludes model loading too. Agreement with the fp32
loop: of the row x label decisions (label at or above its saved threshold), and of whole label sets.

    python benchmarks/infer_throughput.py --data ../shared/data/arxiv    # ~12 min on 2 cores, plus ~7 min to train once
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_name  # benchmarks/, the script's own directory

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare_data(data: Path, work: Path, train_rows: int, bench_rows: int):
    """Training and validation files (the first rows; validation only with labels training has), and the benchmark
    input (the last rows)."""
    train, validation, bench = (
        work / f"arxiv-{part}.jsonl"
        for part in (f"train-{train_rows}", f"validation-{train_rows}", f"bench-{bench_rows}")
    )
    if not (train.exists() and validation.exists() and bench.exists()):
        lines = (data / "papers_before_2510.jsonl").read_text().splitlines()
        assert len(lines) >= train_rows * 1.2 + bench_rows, f"{data}: only {len(lines)} papers"
        seen = {c for l in lines[:train_rows] for c in json.loads(l)["categories"]}
        held_out = [l for l in lines[train_rows : int(train_rows * 1.2)] if set(json.loads(l)["categories"]) <= seen]
        train.write_text("\n".join(lines[:train_rows]) + "\n")
        validation.write_text("\n".join(held_out) + "\n")
        bench.write_text("\n".join(lines[-bench_rows:]) + "\n")
    return train, validation, bench


def train_model(train: Path, validation: Path, work: Path, steps: int, overrides=()) -> str:
    run = work / "-".join(
        ["minilm", train.stem, f"{steps}steps", *(o.replace("=", "_").replace("/", "_") for o in overrides)]
    )
    if not (run / "model" / "config.json").exists():
        cmd = [
            sys.executable,
            str(ROOT / "run.py"),
            "train",
            "data=arxiv",
            f"data.train={train}",
            f"data.validation={validation}",
            "task=multi_label",
            f"trainer.max_steps={steps}",
            f"output_dir={run}",
            *overrides,
        ]
        print("training:", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    return str(run / "model")


def load_rows(path: Path):
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    return (
        [r["id"] for r in rows],
        [r["title"] for r in rows],
        [r["abstract"] for r in rows],
        [set(r["categories"]) for r in rows],
    )


def label_sets(probs: np.ndarray, labels, thresholds: np.ndarray):
    return [frozenset(labels[j] for j in np.flatnonzero(p >= thresholds)) for p in probs]


def f1_micro(predicted, truth) -> float:
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    binarizer = MultiLabelBinarizer().fit(list(predicted) + list(truth))
    return float(f1_score(binarizer.transform(truth), binarizer.transform(predicted), average="micro"))


def hf_pipeline(model_dir: str, titles, abstracts, batch_size: int) -> float:
    from transformers import pipeline

    pipe = pipeline("text-classification", model=model_dir, device=-1, top_k=None, function_to_apply="sigmoid")
    inputs = [{"text": t, "text_pair": a} for t, a in zip(titles, abstracts)]
    pipe(inputs[:4], batch_size=batch_size, truncation=True)  # warm-up
    start = time.perf_counter()
    pipe(inputs, batch_size=batch_size, truncation=True)
    return len(inputs) / (time.perf_counter() - start)


def loop(model_dir: str, titles, abstracts, precision: str):
    """(rows/s, probabilities, precision): the in-process loop at batch_infer's CPU batch size, tokenization
    included."""
    import torch
    from transformers import AutoTokenizer

    from recipes.infer_predict import default_batch_size, load_for_inference, predict_logits

    torch.set_num_threads(os.cpu_count())
    cpu = torch.device("cpu")
    model, name, dtype = load_for_inference(model_dir, precision, cpu)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    predict_logits(model, [np.arange(1, 64)] * 4, [np.zeros(63, np.int64)] * 4, 4, 0, cpu, dtype)  # warm-up
    start = time.perf_counter()
    enc = tokenizer(titles, abstracts, truncation=True, return_attention_mask=False)
    logits = predict_logits(
        model,
        [np.array(x) for x in enc["input_ids"]],
        [np.array(x) for x in enc["token_type_ids"]],
        default_batch_size(name, False),
        tokenizer.pad_token_id,
        cpu,
        dtype,
    )
    rate = len(titles) / (time.perf_counter() - start)
    return rate, 1 / (1 + np.exp(-logits)), name


def batch_infer(model_dir: str, src: Path, out: Path, overrides, replicas: int = 0):
    """(end-to-end rows/s, pipeline rows/s, steady rows/s, {id: label set}, precision) of `python run.py infer`,
    or of the batch_infer component on `replicas` local_cwd replicas."""
    import pandas as pd

    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "infer",
        f"model_dir={model_dir}",
        f"input={src}",
        f"output={out}",
        "overwrite=true",
        *overrides,
    ]
    if replicas:
        cmd = [
            sys.executable,
            "-m",
            "torchx.cli.main",
            "run",
            "-s",
            "local_cwd",
            "components/infer.py:batch_infer",
            "--nnodes",
            str(replicas),
            "--cpu",
            str(max(1, os.cpu_count() // replicas)),
            "--model",
            model_dir,
            "--input",
            str(src),
            "--output",
            str(out),
            "--",
            "overwrite=true",
            *overrides,
        ]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    manifest = json.loads((out / "_SUCCESS").read_text())
    got = pd.read_parquet(out)
    return (
        manifest["rows"] / seconds,
        manifest["rows"] / manifest["pipeline_seconds"],
        manifest["rows"] / manifest["predict_seconds"],
        dict(zip(got["id"], map(frozenset, got["labels"]))),
        "/".join(manifest["precision"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "arxiv"))
    parser.add_argument("--work", default=str(ROOT / "outputs" / "bench-infer"))
    parser.add_argument("--rows", type=int, default=2000, help="benchmark input rows")
    parser.add_argument("--pipeline-rows", type=int, default=500, help="rows for the (slow) HF pipeline baselines")
    parser.add_argument("--train-rows", type=int, default=12000)
    parser.add_argument("--train-steps", type=int, default=375, help="one epoch of --train-rows at batch 32")
    parser.add_argument("--train-override", nargs="*", default=["optim.lr=3e-4"], help="more run.py train overrides")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "infer" / "infer_throughput.json"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train, validation, src = prepare_data(Path(args.data), work, args.train_rows, args.rows)
    model_dir = train_model(train, validation, work, args.train_steps, args.train_override)

    from transformers import AutoConfig

    from recipes import tasks
    from recipes.infer_predict import default_batch_size
    from recipes.runtime import cpu_bf16_is_faster

    config = AutoConfig.from_pretrained(model_dir)
    labels = [config.id2label[i] for i in range(config.num_labels)]
    thresholds = tasks.of_model(config, model_dir).thresholds
    ids, titles, abstracts, truth = load_rows(src)
    results = []

    def record(run, rate, precision, sets=None, pipeline_rate=None, steady_rate=None):
        """`sets`: {id: predicted label set}, compared with the fp32 loop's."""
        agree = {}
        if sets is not None:
            one_hot = lambda s: np.array([[l in s[i] for l in labels] for i in ids])  # noqa: E731
            agree = {
                "decision_agreement_with_fp32": round(float((one_hot(sets) == one_hot(reference)).mean()), 5),
                "label_set_agreement_with_fp32": round(float(np.mean([sets[i] == reference[i] for i in ids])), 4),
                "f1_micro_vs_true_categories": round(f1_micro([sets[i] for i in ids], truth), 4),
            }
        results.append(
            {
                "run": run,
                "precision": precision,
                "rows_per_s": round(rate, 1),
                "pipeline_rows_per_s": None if pipeline_rate is None else round(pipeline_rate, 1),
                "steady_rows_per_s": None if steady_rate is None else round(steady_rate, 1),
                **agree,
            }
        )
        print(json.dumps(results[-1]), flush=True)

    n = args.pipeline_rows
    for bs in (1, 32):
        record(f"HF pipeline, batch {bs} ({n} rows)", hf_pipeline(model_dir, titles[:n], abstracts[:n], bs), "fp32")
    reference = None
    for precision in ["fp32", "int8"] + (["bf16"] if cpu_bf16_is_faster() else []):
        rate, probs, name = loop(model_dir, titles, abstracts, precision)
        sets = dict(zip(ids, label_sets(probs, labels, thresholds)))
        reference = reference or sets
        record(f"in-process loop, sorted by length, batch {default_batch_size(name, False)}", rate, name, sets)
    for precision in ("auto", "int8"):
        for actors, threads in ((2, 1), (1, 2)):
            e2e, pipe_rate, steady, got, name = batch_infer(
                model_dir,
                src,
                work / "out",
                [f"precision={precision}", f"actors={actors}", f"threads_per_actor={threads}"],
            )
            record(f"run.py infer, {actors} actor(s) x {threads} thread(s)", e2e, name, got, pipe_rate, steady)
    for replicas in (1, 2):
        e2e, pipe_rate, steady, got, name = batch_infer(
            model_dir, src, work / "out", ["precision=auto"], replicas=replicas
        )
        record(f"torchx batch_infer, {replicas} replica(s)", e2e, name, got, pipe_rate, steady)
    out = {"cpu": cpu_name(), "model": model_dir, "rows": len(ids), "labels": len(labels), "results": results}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2) + "\n")
    print(
        "\n| run | precision | rows/s | excl. Ray start | once models are loaded "
        "| decisions = fp32 | label sets = fp32 | F1 |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        cells = [
            "" if r.get(k) is None else r[k]
            for k in (
                "pipeline_rows_per_s",
                "steady_rows_per_s",
                "decision_agreement_with_fp32",
                "label_set_agreement_with_fp32",
                "f1_micro_vs_true_categories",
            )
        ]
        print(f"| {r['run']} | {r['precision']} | {r['rows_per_s']} | {' | '.join(map(str, cells))} |")
    plot(results, Path(args.results).with_suffix(".png"), out["cpu"])


def plot(results, path: Path, cpu: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['run']} [{r['precision']}]" for r in results]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(results) + 1.6))
    ax.barh(
        names,
        [r["steady_rows_per_s"] or 0 for r in results],
        color="tab:blue",
        alpha=0.25,
        label="once models are loaded",
    )
    ax.barh(
        names,
        [r["pipeline_rows_per_s"] or 0 for r in results],
        color="tab:blue",
        alpha=0.5,
        label="excluding Ray start",
    )
    ax.barh(names, [r["rows_per_s"] for r in results], color="tab:blue", label="end to end")
    ax.invert_yaxis()
    ax.set_xlabel("rows/s (2,000 arXiv title+abstract pairs, MiniLM-L6 multi-label)")
    ax.set_title(cpu, fontsize=9)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
