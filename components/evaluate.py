"""Evaluate a trained classifier:
``torchx run components/evaluate.py:evaluate --checkpoint RUN/model -- [key=value ...]``."""

from typing import Dict, Optional

from torchx import specs

from components.train import IMAGE
from launcher.job.ports import DERIVED
from launcher.submit.appdef import recipe_app


def evaluate(
    *overrides: str,
    checkpoint: str,
    split: str = "test",
    output_dir: Optional[str] = None,
    nproc_per_node: Optional[int] = None,
    image: str = IMAGE,
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    name: str = "text-recipes-evaluate",
) -> specs.AppDef:
    """
    Evaluates a model directory written by training (``<run>/model``) on a labeled split with the
    recipe in recipes/evaluate.py (``python run.py evaluate``). Writes metrics.json (accuracy,
    precision/recall/F1 micro, macro and per class), predictions.jsonl and a confusion-matrix
    (single-label) or precision-recall (multi-label) PNG.

    Args:
        overrides: Hydra overrides for conf/evaluate.yaml, e.g. data=files data.test=gs://bucket/test.csv
            (put them after ``--``)
        checkpoint: the trained model directory, local path or gs:// URL (e.g. outputs/minilm-support_tickets/model)
        split: which split of the data config to score: train, validation or test
        output_dir: where results go (default: <checkpoint>/../eval-<data>-<split>); on kubernetes gs://
        nproc_per_node: processes sharing the prediction work (default: one per GPU of the replica, from --gpu
            or -h, else 1; at most that many GPUs, each process takes one)
        image: container image (kubernetes: the Dockerfile's, default from .torchxconfig); local_cwd and slurm
            run the current directory
        cpu: CPUs per replica (default: 2 per GPU, at least 2)
        gpu: GPUs per replica
        memMB: memory per replica in MB (default: 11646 per GPU, at least 8192)
        h: a registered named resource; takes precedence over cpu/gpu/memMB
        env: environment variables for the job (never secrets)
        max_retries: scheduler retries
        name: job name
    """
    overrides = (*overrides, f"checkpoint={checkpoint}", f"split={split}")
    if output_dir:
        overrides = (*overrides, f"output_dir={output_dir}")
    return recipe_app(
        "evaluate",
        list(overrides),
        name=name,
        image=image,
        nnodes=1,
        nproc_per_node=nproc_per_node,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        h=h,
        env=env,
        max_retries=max_retries,
        rdzv_port=DERIVED,  # one node: torchrun's store takes a free port
    )
