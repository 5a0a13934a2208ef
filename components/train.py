"""Fine-tune a text classifier: ``torchx run components/train.py:train [args] -- [key=value ...]``."""

from typing import Dict, Optional

from torchx import specs

from launcher.submit.appdef import recipe_app

IMAGE = "text-recipes:latest"


def train(
    *overrides: str,
    nnodes: int = 1,
    nproc_per_node: Optional[int] = None,
    output_dir: Optional[str] = None,
    image: str = IMAGE,
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 0,
    name: str = "text-recipes-train",
) -> specs.AppDef:
    """
    Fine-tunes a Hugging Face text classifier with the recipe in recipes/train.py
    (``python run.py train``), run by torchrun on every replica. With no arguments it
    fine-tunes the packaged all-MiniLM-L6-v2 on the shipped support-ticket data, offline.
    Relaunching with the same output directory resumes from its newest checkpoint,
    so max_retries > 0 makes a job survive node failures and preemption.

    Args:
        overrides: Hydra overrides for conf/train.yaml, e.g. model=hub model.name_or_path=bert-base-uncased
            data=files data.train=gs://bucket/train.jsonl task=multi_label trainer.max_steps=500
            (put them after ``--``; ``python run.py train --cfg job`` prints every key)
        nnodes: number of hosts (replicas); more than one uses c10d rendezvous on the rank-0 host
        nproc_per_node: processes per host (default: one per GPU of a replica, from --gpu or -h, else 1;
            at most that many GPUs, each process takes one; on CPU, DDP over gloo)
        output_dir: run directory, local path or gs:// URL (default: conf/train.yaml's output_dir,
            outputs/<model>-<data>, with -<n>procs for n > 1 processes); on kubernetes gs://
        image: container image (kubernetes: the Dockerfile's, default from .torchxconfig); local_cwd and slurm
            run the current directory
        cpu: CPUs per replica (default: 2 per GPU, at least 2)
        gpu: GPUs per replica
        memMB: memory per replica in MB (default: 11646 per GPU, at least 8192)
        h: a registered named resource (e.g. a GPU or TPU host type); takes precedence over cpu/gpu/memMB
        env: environment variables for the job, e.g. HF_HUB_OFFLINE=1,TOKENIZERS_PARALLELISM=false
            (never secrets: they would be stored in the job definition)
        max_retries: scheduler retries; each retry resumes from the newest checkpoint
        rdzv_port: port of the c10d rendezvous store on the rank-0 host (multi-node only); 0: derived from the
            job id, alike on every replica, so that jobs sharing a node do not collide (one node: a free port)
        name: job name
    """
    if output_dir:
        overrides = (*overrides, f"output_dir={output_dir}")
    return recipe_app(
        "train",
        list(overrides),
        name=name,
        image=image,
        nnodes=nnodes,
        nproc_per_node=nproc_per_node,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        h=h,
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
    )
