"""Training throughput: this recipe vs Hugging Face Trainer, same model, data, optimizer and schedule.

    python benchmarks/train_throughput.py --data ../shared/data/sst2 [--seeds 0 1 2] [hydra overrides]

Both fine-tune the packaged all-MiniLM-L6-v2 for one epoch on the same 8,000 SST-2 training
sentences (fixed sample), batch 32, and are scored on the SST-2 dev set (872 sentences), once
per training seed. Hyperparameters are the recipe's (conf/, plus any overrides given here); HF
Trainer gets the very same optimizer (param groups, lr, weight decay, betas) and lr schedule,
runs with DataCollatorWithPadding and train_sampling_strategy="group_by_length" (its fastest
setting on CPU), and with "random" too if --hf-random is given. Prints samples/s and dev
accuracy per run and their means, the speed-up, and writes benchmarks/results/train_throughput.{json,png}.
Each run trains in a fresh process, so nothing one sets process-wide (allocator, threads) reaches another.
"""

import argparse
import csv
import json
import multiprocessing
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One pass over the data needs no regularization: both train without dropout (see README).
SETTINGS = ["model.dropout=0.0"]
RECIPE, HF_GROUPED, HF_RANDOM = "text-recipes", "HF Trainer group_by_length", "HF Trainer random"


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype={"sentence": str}, keep_default_na=False)


def recipe_config(train_file: Path, dev_file: Path, seed: int, out: Path, overrides):
    from launcher.compose import compose

    cfg = compose(
        "train",
        [
            "data=sst2",
            f"data.train={train_file}",
            f"data.validation={dev_file}",
            "trainer.epochs=1",
            "trainer.batch_size=32",
            f"trainer.seed={seed}",
            f"output_dir={out}",
            *SETTINGS,
            *overrides,
        ],
    )
    OmegaConf.resolve(cfg)  # no custom resolvers needed where it runs
    return cfg


def in_fresh_process(fn, *args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def run_recipe(cfg) -> dict:
    from recipes.runtime import init_runtime
    from recipes.train import train

    result = train(cfg, init_runtime("cpu"))
    return {"samples_per_second": result["train_samples_per_second"], "dev_accuracy": result["validation"]["accuracy"]}


def run_hf_trainer(cfg, train_df, dev_df, strategy: str, out: Path) -> dict:
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        get_scheduler,
    )

    from recipes.model import set_dropout
    from recipes.train import make_optimizer

    tc, path = cfg.trainer, cfg.model.name_or_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(tc.seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    set_dropout(model, cfg.model.dropout)

    def encode(df):
        ds = Dataset.from_dict({"sentence": df["sentence"].tolist(), "label": df["label"].astype(int).tolist()})
        return ds.map(
            lambda b: tokenizer(b["sentence"], truncation=True, max_length=cfg.model.max_length),
            batched=True,
            remove_columns=["sentence"],
        )

    train_ds, dev_ds = encode(train_df), encode(dev_df)
    steps = int(np.ceil(len(train_ds) / tc.batch_size))
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = get_scheduler(cfg.optim.scheduler, optimizer, round(cfg.optim.warmup_fraction * steps), steps)
    targs = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=tc.batch_size,
        per_device_eval_batch_size=128,
        num_train_epochs=1,
        max_grad_norm=tc.max_grad_norm,
        train_sampling_strategy=strategy,
        save_strategy="no",
        report_to=[],
        logging_steps=50,
        seed=tc.seed,
        use_cpu=True,
        disable_tqdm=False,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=train_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        optimizers=(optimizer, scheduler),
    )
    metrics = trainer.train().metrics
    pred = trainer.predict(dev_ds)  # label_ids come back in the same order as the predictions
    return {
        "samples_per_second": metrics["train_samples_per_second"],
        "dev_accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean()),
    }


def machine() -> dict:
    import transformers

    from recipes.runtime import cpu_bf16_is_faster

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "unknown"
    )
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return {
        "cpu": model,
        "cores": torch.get_num_threads(),
        "bf16_isa": [f for f in flags if f in ("avx512_bf16", "amx_bf16")],
        "bf16_matmul_faster": cpu_bf16_is_faster(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def summarize(runs: list) -> dict:
    def stats(key):
        values = [r[key] for r in runs]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    (sps, sps_sd), (acc, acc_sd) = stats("samples_per_second"), stats("dev_accuracy")
    return {
        "samples_per_second": sps,
        "samples_per_second_std": sps_sd,
        "dev_accuracy": acc,
        "dev_accuracy_std": acc_sd,
    }


def plot(summary: dict, path: Path, seeds: int, machine: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    bars = ax.barh(
        names,
        [summary[n]["samples_per_second"] for n in names],
        xerr=[summary[n]["samples_per_second_std"] for n in names],
        color=["tab:green"] + ["tab:gray"] * (len(names) - 1),
    )
    for bar, n in zip(bars, names):
        s = summary[n]
        ax.text(
            s["samples_per_second"] + s["samples_per_second_std"],
            bar.get_y() + bar.get_height() / 2,
            f"  {s['samples_per_second']:.0f}/s, dev acc {s['dev_accuracy']:.3f}",
            va="center",
        )
    ax.set_xlabel(f"training samples / second (2 CPU cores), mean of {seeds} seeds")
    ax.set_xlim(0, max(s["samples_per_second"] + s["samples_per_second_std"] for s in summary.values()) * 1.6)
    precision = "bf16" if machine["bf16_matmul_faster"] else "fp32"
    ax.set_title(
        f"MiniLM-L6 on 8,000 SST-2 sentences, batch 32, 1 epoch\n"
        f"{machine['cpu']}; recipe picked {precision}, HF Trainer fp32",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "sst2",
        help="folder with SST-2 train.tsv and dev.tsv",
    )
    p.add_argument("--samples", type=int, default=8000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds; each trains both once")
    p.add_argument("--hf-random", action="store_true", help="also run HF Trainer with random batches (slow)")
    p.add_argument("--skip-hf", action="store_true", help="only run the recipe")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument(
        "overrides", nargs="*", help="Hydra overrides of the recipe config, e.g. optim.lr=2e-4 (HF gets the same)"
    )
    args = p.parse_args()

    train_df = read_tsv(args.data / "train.tsv").sample(n=args.samples, random_state=0)
    dev_df = read_tsv(args.data / "dev.tsv")
    names = [RECIPE] + ([] if args.skip_hf else [HF_GROUPED] + ([HF_RANDOM] if args.hf_random else []))
    runs = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_file = tmp / "train_subset.tsv"
        train_df.to_csv(train_file, sep="\t", index=False, quoting=csv.QUOTE_NONE, escapechar="\\")
        for seed in args.seeds:
            cfg = recipe_config(train_file, args.data / "dev.tsv", seed, tmp / f"recipe-{seed}", args.overrides)
            runs[RECIPE].append({"seed": seed, **in_fresh_process(run_recipe, cfg)})
            for name, strategy in ((HF_GROUPED, "group_by_length"), (HF_RANDOM, "random")):
                if name in runs:
                    result = in_fresh_process(
                        run_hf_trainer, cfg, train_df, dev_df, strategy, tmp / f"hf-{strategy}-{seed}"
                    )
                    runs[name].append({"seed": seed, **result})

    print(f"\n{'run':<28} {'seed':>5} {'samples/s':>10} {'dev acc':>8}")
    for name in names:
        for r in runs[name]:
            print(f"{name:<28} {r['seed']:>5} {r['samples_per_second']:>10.1f} {r['dev_accuracy']:>8.4f}")
    summary = {name: summarize(runs[name]) for name in names}
    print(f"\nmean over seeds {args.seeds}:")
    for name, s in summary.items():
        print(
            f"{name:<28} {s['samples_per_second']:>7.1f} ± {s['samples_per_second_std']:<5.1f} samples/s   "
            f"dev acc {s['dev_accuracy']:.4f} ± {s['dev_accuracy_std']:.4f}"
        )
    report = {
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "settings": SETTINGS + args.overrides,
        "optim": OmegaConf.to_container(cfg.optim),
        "trainer": OmegaConf.to_container(cfg.trainer),
        "runs": runs,
        "mean": summary,
    }
    if HF_GROUPED in summary:
        report["speedup_vs_hf_group_by_length"] = (
            summary[RECIPE]["samples_per_second"] / summary[HF_GROUPED]["samples_per_second"]
        )
        print(f"speed-up over HF Trainer group_by_length: {report['speedup_vs_hf_group_by_length']:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(summary, args.out / "train_throughput.png", len(args.seeds), report["machine"])
    print(f"wrote {args.out / 'train_throughput.json'} and train_throughput.png")


if __name__ == "__main__":
    main()
