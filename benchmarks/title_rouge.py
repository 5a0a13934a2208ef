"""arXiv titles from abstracts: a trained seq2seq run against the first-10-words baseline, on the same held-out papers.

    python run.py train data=arxiv_titles task=seq2seq optim.lr=3e-4 trainer.epochs=2 output_dir=outputs/titles
    python benchmarks/title_rouge.py --run outputs/titles [--data ../shared/data]

The baseline takes an abstract's first 10 words as its title. Both are scored with rouge-score (stemming) on the
500 test papers that data=arxiv_titles holds out of training (the recipe's seeded carve); the run's model is
evaluated on them first unless it already was. Prints both and writes benchmarks/results/title_rouge.{json,png}.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def test_papers(data_dir: str):
    from omegaconf import OmegaConf

    from launcher.compose import compose
    from recipes import data, tasks

    os.environ["TEXT_RECIPES_DATA"] = data_dir
    cfg = compose("train", ["data=arxiv_titles", "task=seq2seq"])
    OmegaConf.resolve(cfg)
    return data.load_splits(cfg.data, tasks.build(cfg.task), needed=("test",))["test"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", type=Path, required=True, help="output_dir of a data=arxiv_titles task=seq2seq training run"
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the directory holding arxiv/")
    args = parser.parse_args()
    from benchmarks.machine import cpu_name
    from recipes.tasks.seq2seq import ROUGE, rouge_rows

    table = test_papers(args.data)
    baseline = rouge_rows(table.targets, [" ".join(t.split()[:10]) for t in table.texts])
    baseline = {k: float(np.mean(v)) for k, v in baseline.items()}
    evaluation = args.run / "eval-test"
    if not (evaluation / "metrics.json").exists():
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "run.py"),
                "evaluate",
                f"checkpoint={args.run / 'model'}",
                "data=arxiv_titles",
                "split=test",
                f"output_dir={evaluation}",
            ],
            check=True,
            env={**os.environ, "TEXT_RECIPES_DATA": args.data},
        )
    model = json.loads((evaluation / "metrics.json").read_text())
    steps = json.loads((args.run / "metrics.json").read_text())["steps"]
    print(f"{len(table.texts)} held-out papers")
    for name, scores in (("first 10 words of the abstract", baseline), (f"text-recipes seq2seq, {steps} steps", model)):
        print(f"{name:40s} " + "  ".join(f"{k} {scores[k]:.3f}" for k in ROUGE))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": cpu_name(),
        "papers": len(table.texts),
        "baseline_first_10_words": baseline,
        "model": {"run": str(args.run), "steps": steps, **{k: model[k] for k in ROUGE}},
    }
    (out / "title_rouge.json").write_text(json.dumps(result, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(ROUGE))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for offset, (name, scores) in zip((-0.2, 0.2), (("first 10 words", baseline), (f"seq2seq, {steps} steps", model))):
        bars = ax.bar(x + offset, [scores[k] for k in ROUGE], 0.4, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, ["ROUGE-1", "ROUGE-2", "ROUGE-L"])
    ax.set_ylabel("F-measure")
    ax.set_title(f"arXiv titles from abstracts, {len(table.texts)} held-out papers", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "title_rouge.png", dpi=120)


if __name__ == "__main__":
    main()
