"""The submit side (components, AppDefs, override checks, schedulers) imports no ML stack: `torchx run --dryrun`
stays fast."""

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

# torch, transformers, ray and datasets are what the submit side must never need; the others are what made
# a dryrun take seconds before (pandas, sklearn and scipy through the metrics, matplotlib through the plots)
HEAVY = (
    "torch",
    "transformers",
    "ray",
    "datasets",
    "pandas",
    "sklearn",
    "scipy",
    "matplotlib",
    "seqeval",
    "rouge_score",
    "nltk",
)

SUBMIT = textwrap.dedent("""
    import sys
    from torchx.runner import get_runner
    from components.evaluate import evaluate
    from components.infer import batch_infer
    from components.train import train

    apps = [
        train("task=multi_label", "task.top_k=5", output_dir="gs://b/r1"),
        train("task=token_classification", "data=inspec", "task.window_overlap=8", output_dir="gs://b/r2"),
        train(
            "task=seq2seq", "data=arxiv_titles", "task.num_beams=2",
            nnodes=2, gpu=8, h="slurm_h100_80gb_8", output_dir="gs://b/r3",
        ),
        evaluate("data=rte", checkpoint="gs://b/r1/model"),
        batch_infer(
            "task.top_k=2", "task.num_beams=3",
            model="gs://b/model", input="gs://b/in/*.jsonl", output="gs://b/out", nnodes=3,
        ),
    ]
    runner = get_runner()
    for app in apps:
        runner.dryrun(app, "local_cwd", cfg={})
        runner.dryrun(app, "slurm", cfg={"partition": "gpu", "gpu_request": "gres"})
        runner.dryrun(app, "kubernetes", cfg={"queue": "default", "secret_env": ["TEXT_RECIPES_RAY_SECRET:ray/secret"]})
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
    print("heavy:", ",".join(heavy))
""")


def test_building_and_dryrunning_every_component_imports_no_ml_stack():
    out = subprocess.run([sys.executable, "-c", SUBMIT, *HEAVY], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "heavy:", out.stdout


def test_a_task_checks_its_overrides_on_the_submit_side():
    """The checks of every task's keys run when the AppDef is built, without the task's heavy imports."""
    code = "from components.train import train; train('task=multi_label', 'task.top_k=0')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "task.top_k=0: must be at least 1" in out.stderr
