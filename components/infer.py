"""Batch-score files with a trained classifier on a Ray cluster spanning the job's replicas:
``torchx run components/infer.py:batch_infer --model RUN/model --input DATA --output DIR [--nnodes N]
-- [key=value ...]``."""

from typing import Dict, Optional

from torchx import specs
from torchx.components.dist import _noquote
from torchx.specs.finder import ComponentValidationException

from components.train import IMAGE
from launcher.job.ray_cluster import SECRET_ENV
from launcher.submit.appdef import (
    NEEDS,
    check_env,
    check_job,
    check_overrides,
    command_line,
    default_size,
    port_map,
    replica_resource,
)


def batch_infer(
    *overrides: str,
    model: str,
    input: str,
    output: str,
    nnodes: int = 1,
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    image: str = IMAGE,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    name: str = "text-recipes-infer",
    ray_port: int = 0,
    join_timeout: int = 600,
) -> specs.AppDef:
    """
    Scores every row of the input files with a model written by training, with the Ray Data pipeline
    of recipes/infer.py (``python run.py infer``), and writes predictions to the output directory.
    The job's replicas form one Ray cluster: replica 0 runs the Ray head and the driver, the others
    join it and leave when the driver ends; the job's exit status is the driver's. Ray runs with token
    authentication; the token is derived from $TEXT_RECIPES_RAY_SECRET or ~/.config/text-recipes/ray-secret
    and never enters the job definition. Relaunching with the same output resumes where a run stopped.

    Args:
        overrides: Hydra overrides for conf/infer.yaml, e.g. text_column=body output_format=jsonl
            (put them after ``--``; ``python run.py infer --cfg job`` prints every key)
        model: the trained model directory, local path or gs:// URL (e.g. outputs/minilm-support_tickets/model)
        input: the rows to score: a file, glob or directory (.csv, .tsv, .jsonl, .parquet), local or gs://
        output: the output directory, local or gs:// (on kubernetes gs://)
        nnodes: replicas, one Ray node each
        cpu: CPUs per replica, the Ray node's CPUs (default: 2 per GPU, at least 2)
        gpu: GPUs per replica (the Ray node's GPUs); with GPUs, one predictor actor per GPU
            (override gpus_per_actor to change that)
        memMB: memory per replica in MB (default: 11646 per GPU, at least 8192)
        h: a registered named resource; takes precedence over cpu/gpu/memMB
        image: container image (kubernetes: the Dockerfile's, default from .torchxconfig); local_cwd and slurm
            run the current directory
        env: environment variables for the job (never secrets)
        max_retries: scheduler retries; each retry resumes from what is already written
        name: job name
        ray_port: port of the Ray head (GCS) on replica 0's host; 0: derived from the job id, alike on every
            replica, so that jobs sharing a node do not collide (one replica: a free port); other Ray ports are random
        join_timeout: seconds replica 0 waits for the other replicas' Ray nodes (and they for the head)
    """
    cpu, memMB = default_size(cpu, gpu, memMB)
    # one process per replica: the bootstrap
    check_job(name, nnodes, 1, cpu, gpu, memMB, {"ray_port": ray_port}, h, max_retries)
    if join_timeout < 1:
        raise ComponentValidationException(f"--join_timeout={join_timeout}: must be at least 1 (seconds)")
    env = check_env(env)
    resource = replica_resource(cpu, gpu, memMB, h)
    # the component's --gpu places one actor per GPU by default; overrides after `--` come later and win
    overrides = (
        f"gpus_per_actor={1 if resource.gpu else 0}",
        *overrides,
        f"model_dir={model}",
        f"input={input}",
        f"output={output}",
    )
    check_overrides("infer", list(overrides))
    head = _noquote(f"$${{{specs.macros.rank0_env}:=localhost}}:{ray_port}")
    cmd = [
        "python3",
        "-m",
        "launcher.job.ray_cluster",
        "--replica-id",
        specs.macros.replica_id,
        "--nnodes",
        str(nnodes),
        "--head",
        head,
        "--job-id",
        specs.macros.app_id,
        "--cpus",
        str(resource.cpu),
        "--gpus",
        str(resource.gpu),
        "--join-timeout",
        str(join_timeout),
        "--",
        "python3",
        "run.py",
        "infer",
        *overrides,
    ]
    return specs.AppDef(
        name=name,
        roles=[
            specs.Role(
                name="infer",
                image=image,
                entrypoint="bash",
                args=["-c", command_line(cmd)],
                num_replicas=nnodes,
                resource=resource,
                env=env,
                port_map=port_map("ray", ray_port),
                max_retries=max_retries,
                # replicas derive the cluster's token from a secret they share (launcher/job/ray_cluster.py)
                metadata={NEEDS: {"outputs": {"--output": output}, "secret_env": [SECRET_ENV] if nnodes > 1 else []}},
            )
        ],
    )
