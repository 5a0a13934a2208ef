"""The train recipe on an XLA device (torch_xla, PJRT_DEVICE=CPU) against the same run in eager PyTorch on the CPU.

No TPU here: XLA's CPU client runs the same lazy-tensor path (tracing, one compiled program per batch
shape, xm.optimizer_step, checkpoints copied to the CPU) that a TPU runs. Dropout off and fp32, the two
loss curves must agree to float rounding; then a bf16 run on XLA, as TPUs train by default.

torch_xla 2.9 needs torch 2.9, so this runs in its own environment (large download, opt-in):

    python -m venv /work/xla-venv && /work/xla-venv/bin/pip install torch==2.9.0 'torch_xla==2.9.0' && \
        /work/xla-venv/bin/pip install -e '.'
    /work/xla-venv/bin/python benchmarks/xla_cpu_check.py        # ~5 min on 2 cores, mostly XLA compiling
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(out: Path, device: str, precision: str, steps: int) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "train",
        f"trainer.device={device}",
        f"trainer.precision={precision}",
        f"trainer.max_steps={steps}",
        "trainer.log_every=1",
        "trainer.eval_every=1000",
        "model.dropout=0",
        f"output_dir={out}",
    ]
    env = {**os.environ, "PJRT_DEVICE": "CPU"} if device == "tpu" else dict(os.environ)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    history = json.loads((out / "metrics.json").read_text())
    ckpt = sorted((out / "checkpoints").glob("step_*.pt"))[-1]
    import torch

    losses = [h["train_loss"] for h in torch.load(ckpt, weights_only=False)["state"]["history"] if "train_loss" in h]
    return {"losses": losses, "seconds": seconds, "validation": history["validation"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    import torch
    import torch_xla

    print(
        f"torch {torch.__version__}, torch_xla {torch_xla.__version__}, {os.cpu_count()} CPUs; "
        "data: data/support_tickets, "
        f"model: the packaged MiniLM, {args.steps} steps of batch 32, dropout 0"
    )
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            name: train(Path(tmp) / name, device, precision, args.steps)
            for name, device, precision in (
                ("eager cpu fp32", "cpu", "fp32"),
                ("xla fp32", "tpu", "fp32"),
                ("xla bf16", "tpu", "bf16"),
            )
        }
    eager = runs["eager cpu fp32"]["losses"]
    for name, run in runs.items():
        diff = max(abs(a - b) for a, b in zip(run["losses"], eager))
        print(
            f"{name:15s} {run['seconds']:6.1f} s  validation accuracy {run['validation']['accuracy']:.4f}  "
            f"max |loss - eager| {diff:.2e}  losses {' '.join(f'{l:.4f}' for l in run['losses'])}"
        )
    fp32_diff = max(abs(a - b) for a, b in zip(runs["xla fp32"]["losses"], eager))
    assert fp32_diff < 1e-3, f"XLA fp32 loss curve differs from eager by {fp32_diff}"
    print("XLA fp32 matches eager CPU")


if __name__ == "__main__":
    main()
