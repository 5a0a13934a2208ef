"""Batch inference on CPU, engines and precisions: rows/s and what each costs in the model's answers.

Two models: the packaged MiniLM-L6 with a multi-label head fine-tuned on arXiv title+abstract pairs by this
project's own recipe, one epoch at lr 3e-4 ("converged", 12,000 papers) and 40 steps ("short"); both trained here
once, then cached under outputs/. The input is 2,000 papers that training did not see. In one run, per model:

    (a) transformers.pipeline("text-classification"), batch size 32 (converged model only)
    (b) an in-process loop: rows sorted by length, batch_infer's CPU batch size (16, int8: 8), the recipe's own
        forward (recipes.infer_predict): torch fp32, bf16 autocast, int8 (dynamic quantization); ONNX Runtime fp32
        and int8 (recipes/onnx_engine.py; the export is made and checked before the clock starts)
    (c) python run.py infer, 2 actors x 1 thread: its defaults (ONNX Runtime fp32), precision=int8, engine=torch
    (d) the batch_infer component under `torchx run -s local_cwd`, 1 vs 2 replicas (one Ray node each), defaults

Rates count tokenization and prediction. For run.py infer, "end to end" is the whole command (Ray start, model
loading, writing); "excl. Ray start" is its Ray pipeline (actors' model loading included); "once models are loaded"
runs from the first block an actor began to the last one committed (the manifest's predict_seconds), the rate that
matters for large inputs and the one comparable with the loop. Agreement with the torch fp32 loop: of the row x
label decisions (label at or above its saved threshold), and of whole label sets; F1 against the papers' true
categories.

    python benchmarks/infer_throughput.py --data ../shared/data/arxiv    # ~12 min on 2 cores, plus ~15 min to train
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


def loop(model_dir: str, titles, abstracts, precision: str, engine: str):
    """(rows/s, probabilities): the in-process loop at batch_infer's CPU batch size, tokenization included, on torch
    or ONNX Runtime (its export made and checked first, not timed)."""
    import torch

    from recipes import onnx_engine
    from recipes.infer_predict import DTYPES, default_batch_size, load_for_inference, predict_logits

    torch.set_num_threads(os.cpu_count())
    cpu = torch.device("cpu")
    key = onnx_engine.prepare(model_dir, model_dir, "multi_label", precision)[0] if engine == "onnx" else None
    model, tokenizer, _ = load_for_inference(model_dir, precision, cpu, engine, key, os.cpu_count())
    dtype = DTYPES[precision]
    predict_logits(model, [np.arange(1, 64)] * 4, [np.zeros(63, np.int64)] * 4, 4, 0, cpu, dtype)  # warm-up
    start = time.perf_counter()
    enc = tokenizer(titles, abstracts, truncation=True, return_attention_mask=False)
    logits = predict_logits(
        model,
        [np.array(x) for x in enc["input_ids"]],
        [np.array(x) for x in enc["token_type_ids"]],
        default_batch_size(precision, False),
        tokenizer.pad_token_id,
        cpu,
        dtype,
    )
    rate = len(titles) / (time.perf_counter() - start)
    return rate, 1 / (1 + np.exp(-logits))


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
        "/".join(manifest["engine"]) + " " + "/".join(manifest["precision"]),
    )


LOOP_ARMS = (("torch", "fp32"), ("torch", "bf16"), ("torch", "int8"), ("onnx", "fp32"), ("onnx", "int8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "arxiv"))
    parser.add_argument("--work", default=str(ROOT / "outputs" / "bench-infer"))
    parser.add_argument("--rows", type=int, default=2000, help="benchmark input rows")
    parser.add_argument("--pipeline-rows", type=int, default=500, help="rows for the (slow) HF pipeline baseline")
    parser.add_argument("--train-rows", type=int, default=12000)
    parser.add_argument("--train-steps", type=int, default=375, help="one epoch of --train-rows at batch 32")
    parser.add_argument("--short-steps", type=int, default=40, help="the short-trained model's steps")
    parser.add_argument("--train-override", nargs="*", default=["optim.lr=3e-4"], help="more run.py train overrides")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "infer" / "infer_throughput.json"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train, validation, src = prepare_data(Path(args.data), work, args.train_rows, args.rows)
    converged = train_model(train, validation, work, args.train_steps, args.train_override)
    short = train_model(train, validation, work, args.short_steps, args.train_override)
    ids, titles, abstracts, truth = load_rows(src)
    results = []
    for name, model_dir, whole in (("converged", converged, True), ("short", short, False)):
        results += bench_model(name, model_dir, src, work, ids, titles, abstracts, truth, args.pipeline_rows, whole)
    from recipes.runtime import cpu_bf16_is_faster

    out = {
        "cpu": cpu_name(),
        "cpu_bf16_is_faster": cpu_bf16_is_faster(),
        "models": {"converged": converged, "short": short},
        "rows": len(ids),
        "results": results,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2) + "\n")
    print(
        "\n| model | run | engine, precision | rows/s | excl. Ray start | once models are loaded "
        "| decisions = fp32 | label sets = fp32 | F1 |\n"
        "|---|---|---|---|---|---|---|---|---|"
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
        print(f"| {r['model']} | {r['run']} | {r['precision']} | {r['rows_per_s']} | {' | '.join(map(str, cells))} |")
    plot([r for r in results if r["model"] == "converged"], Path(args.results).with_suffix(".png"), out["cpu"])


def bench_model(model_name, model_dir, src, work, ids, titles, abstracts, truth, pipeline_rows, whole) -> list:
    """Every arm on one model; `whole`: also the HF pipeline, run.py infer and the torchx component."""
    from transformers import AutoConfig

    from recipes import tasks

    config = AutoConfig.from_pretrained(model_dir)
    labels = [config.id2label[i] for i in range(config.num_labels)]
    thresholds = tasks.of_model(config, model_dir).thresholds
    results, reference = [], {}

    def record(run, rate, precision, sets=None, pipeline_rate=None, steady_rate=None):
        """`sets`: {id: predicted label set}, compared with the torch fp32 loop's."""
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
                "model": model_name,
                "run": run,
                "precision": precision,
                "rows_per_s": round(rate, 1),
                "pipeline_rows_per_s": None if pipeline_rate is None else round(pipeline_rate, 1),
                "steady_rows_per_s": None if steady_rate is None else round(steady_rate, 1),
                **agree,
            }
        )
        print(json.dumps(results[-1]), flush=True)

    n = pipeline_rows
    if whole:
        record(f"HF pipeline, batch 32 ({n} rows)", hf_pipeline(model_dir, titles[:n], abstracts[:n], 32), "torch fp32")
    for engine, precision in LOOP_ARMS:
        rate, probs = loop(model_dir, titles, abstracts, precision, engine)
        sets = dict(zip(ids, label_sets(probs, labels, thresholds)))
        reference = reference or sets
        record("in-process loop, sorted by length", rate, f"{engine} {precision}", sets)
    if not whole:
        return results
    for overrides in ([], ["precision=int8"], ["engine=torch"]):
        e2e, pipe_rate, steady, got, name = batch_infer(
            model_dir, src, work / "out", [*overrides, "actors=2", "threads_per_actor=1"]
        )
        run = "run.py infer, 2 actors x 1 thread" + (f" ({' '.join(overrides)})" if overrides else " (defaults)")
        record(run, e2e, name, got, pipe_rate, steady)
    for replicas in (1, 2):
        e2e, pipe_rate, steady, got, name = batch_infer(model_dir, src, work / "out", [], replicas=replicas)
        record(f"torchx batch_infer, {replicas} replica(s) (defaults)", e2e, name, got, pipe_rate, steady)
    return results


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
