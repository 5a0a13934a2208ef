"""Where a training step's time goes: the recipe under torch.profiler, top operators by self CPU time.

    python benchmarks/profile_train.py --data ../shared/data/sst2 [--steps 60] [hydra overrides]

Runs the same recipe config as train_throughput.py (packaged MiniLM-L6, SST-2 sentences, batch 32)
for --steps optimizer steps and prints the operators that take the most time, with their share.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from train_throughput import ROOT, read_tsv, recipe_config, run_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "sst2",
        help="folder with SST-2 train.tsv and dev.tsv",
    )
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe config")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # a small validation file keeps the final evaluation out of the picture
        read_tsv(args.data / "dev.tsv").head(64).to_csv(tmp / "dev.tsv", sep="\t", index=False)
        cfg = recipe_config(
            args.data / "train.tsv",
            tmp / "dev.tsv",
            0,
            tmp / "run",
            [f"trainer.max_steps={args.steps}", *args.overrides],
        )
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            result = run_recipe(cfg)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\n{args.steps} steps at {result['samples_per_second']:.1f} samples/s; top operators by self CPU time:")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]:
        print(
            f"{e.key:<48} {e.self_cpu_time_total / 1e6:>7.2f} s "
            f"{100 * e.self_cpu_time_total / total:>5.1f} %  ({e.count} calls)"
        )


if __name__ == "__main__":
    main()
