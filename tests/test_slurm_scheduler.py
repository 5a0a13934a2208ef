"""The Slurm scheduler without a cluster: the sbatch script it writes, what that script decides when its srun ends
(run with stand-in srun and scontrol), and how status, list and log read Slurm's answers. The real cluster's
tests are in test_slurm.py."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from torchx.specs import AppState

from launcher.submit import slurm
from tests.conftest import ROOT, run_torchx

SMALL = ["--cpu", "1", "--memMB", "1000"]


def dryrun(*args, cfg="partition=gpu", path=None) -> str:
    env = {"PATH": f"{path}:{os.environ['PATH']}"} if path else None
    out = run_torchx("run", "--dryrun", "-s", "slurm", "-cfg", cfg, *args, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout.split("# SBATCH_SCRIPT", 1)[1]


def refused(*args, cfg="partition=gpu", path=None) -> str:
    env = {"PATH": f"{path}:{os.environ['PATH']}"} if path else None
    out = run_torchx("run", "--dryrun", "-s", "slurm", "-cfg", cfg, *args, env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    return out.stderr


def sbatch_lines(script: str) -> list:
    return [line for line in script.splitlines() if line.startswith("#SBATCH") and line != "#SBATCH hetjob"]


def test_run_options_reach_every_component_and_the_name_is_the_jobs():
    script = dryrun(
        "components/train.py:train", "--nnodes", "2", "--name", "sst2-probe", *SMALL,
        cfg="partition=gpu,account=acme,qos=high,constraint=h100,reservation=maint,exclude=node9,time=1:00:00",
    )  # fmt: skip
    groups = sbatch_lines(script)
    assert len(groups) == 2
    for k, line in enumerate(groups):
        for opt in ("--account=acme", "--qos=high", "--constraint=h100", "--reservation=maint", "--exclude=node9"):
            assert opt in line.split(), line
        assert f"--job-name=sst2-probe.train-{k}" in line.split()
    assert "--signal=B:USR1@120" in groups[0].split() and "--signal" not in groups[1]  # the batch shell's
    assert script.count("--cpus-per-task=1") == 4  # sbatch's and srun's of each component: binding needs both


def test_an_unknown_run_option_is_one_line():
    err = refused("components/train.py:train", cfg="partition=gpu,acount=acme")
    assert "-cfg acount: not a slurm option; expected one of account," in err


def test_nodelist_names_one_host_per_replica():
    script = dryrun("components/train.py:train", "--nnodes", "2", *SMALL, cfg="partition=gpu,nodelist=gpu1,gpu2")
    assert [re.search(r"--nodelist=(\S+)", line).group(1) for line in sbatch_lines(script)] == ["gpu1", "gpu2"]
    assert "names 1 host(s), expected one per replica (2)" in refused(
        "components/train.py:train", "--nnodes", "2", *SMALL, cfg="partition=gpu,nodelist=gpu1"
    )


@pytest.fixture
def sinfo(tmp_path):
    """A stand-in sinfo on PATH that prints the given node lines (%N|%c|%m|%G)."""

    def make(*nodes: str) -> Path:
        where = Path(tempfile.mkdtemp(dir=tmp_path))
        answer = "cat <<'EOF'\n" + "\n".join(nodes) + "\nEOF\n" if nodes else "exit 1\n"  # none: not on a cluster
        (where / "sinfo").write_text("#!/bin/sh\n" + answer)
        (where / "sinfo").chmod(0o755)
        return where

    return make


def test_the_named_resources_gpu_type_and_gpu_type_override(sinfo):
    nodes = sinfo("a1|64|1000000|gpu:nvidia_a100-sxm4-80gb:8", "h1|112|2000000|gpu:nvidia_h100_80gb_hbm3:8(S:0-1)")
    script = dryrun("components/train.py:train", "-h", "slurm_h100_80gb_8", path=nodes)
    assert "--gpus-per-node=nvidia_h100_80gb_hbm3:8" in script
    script = dryrun(
        "components/train.py:train", "-h", "slurm_h100_80gb_8", cfg="partition=gpu,gpu_type=h100", path=sinfo()
    )
    assert "--gpus-per-node=h100:8" in script  # no sinfo answers off the cluster: nothing to check against
    err = refused("components/train.py:train", "-h", "slurm_h100_80gb_8", cfg="partition=gpu,gpu_type=h100", path=nodes)
    assert "GPU type h100: not in the GRES of partition gpu (nvidia_a100-sxm4-80gb, nvidia_h100_80gb_hbm3)" in err


def test_a_request_no_node_of_the_partition_holds_is_one_line(sinfo):
    nodes = sinfo("n1|2|4000|(null)", "n2|2|4000|(null)")
    err = refused("components/train.py:train", "--nnodes", "2", path=nodes)
    assert "train-0: asks mem=8192 MB, but the largest node of partition gpu has 4000 MB; pass --memMB" in err
    err = refused("components/train.py:train", "--cpu", "4", "--memMB", "1000", path=nodes)
    assert "asks cpus-per-task=4, but the largest node of partition gpu has 2; pass --cpu" in err
    assert "--cpus-per-task=2" in dryrun("components/train.py:train", "--cpu", "2", "--memMB", "4000", path=nodes)


# ---- the batch script's decisions, with stand-ins for srun and scontrol


def batch_script(tmp_path, failure_retries=1, timelimit_requeues=2) -> Path:
    request = slurm.BatchRequest(
        cmd=["sbatch"],
        replicas={},
        job_dir=None,
        max_retries=failure_retries,
        timelimit_requeues=timelimit_requeues,
    )
    body = request.materialize().replace("srun  &", "srun &")
    path = tmp_path / "job.sh"
    path.write_text(body)
    return path


def stand_ins(tmp_path, srun: str, preempt_time="None", end_time="2099-01-01T00:00:00", state="RUNNING", requeue=0):
    """srun runs `srun` (a bash body); scontrol answers `show job` with these fields and logs `requeue` calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(f"#!/bin/bash\n{srun}\n")
    (bin_dir / "scontrol").write_text(
        "#!/bin/bash\n"
        'if [ "$1" = requeue ]; then echo "$2" >> "$(dirname "$0")/requeued"; exit ' + str(requeue) + "; fi\n"
        f'echo "JobId=$SLURM_JOB_ID JobState={state} EndTime={end_time} PreemptTime={preempt_time} X=1"\n'
    )
    for name in ("srun", "scontrol"):
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_batch(tmp_path, bin_dir, restarts=0, signal_after=None, sig=signal.SIGUSR1):
    (tmp_path / "outputs" / "slurm").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77"}
    if restarts:
        env["SLURM_RESTART_COUNT"] = str(restarts)
    proc = subprocess.Popen(
        ["bash", str(batch_script(tmp_path))],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if signal_after is not None:
        time.sleep(signal_after)
        if sig == signal.SIGUSR1:  # --signal=B:USR1: the batch shell alone
            proc.send_signal(sig)
        else:  # a job being killed: slurmd signals every process of the job
            os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=60)
    requeued = (bin_dir / "requeued").read_text().split() if (bin_dir / "requeued").exists() else []
    record = (tmp_path / "outputs" / "slurm" / "slurm-77.exit").read_text().strip()
    return proc.returncode, record, requeued, out


def test_a_job_that_succeeds_is_not_requeued(tmp_path):
    code, record, requeued, _ = run_batch(tmp_path, stand_ins(tmp_path, "exit 0"))
    assert (code, record, requeued) == (0, "0", [])


def test_preemption_requeues_whatever_the_exit_status_of_the_other_nodes(tmp_path):
    """--kill-on-bad-exit: node 2's tasks read 143 once node 1's stopped; PreemptTime tells what happened."""
    bins = stand_ins(tmp_path, "exit 143", preempt_time="2026-12-07T06:05:22")
    code, record, requeued, out = run_batch(tmp_path, bins)
    assert (code, record, requeued) == (0, "requeued", ["77"]), out
    assert (tmp_path / "outputs" / "slurm" / "slurm-77.requeues").read_text().split()[0] == "preempted"


def test_sigusr1_before_the_time_limit_reaches_srun_and_requeues_up_to_the_cap(tmp_path):
    srun = "trap 'exit 143' USR1\nsleep 30 >/dev/null & wait"  # like srun: ends once its tasks stopped
    code, record, requeued, out = run_batch(tmp_path, stand_ins(tmp_path, srun), signal_after=1)
    assert (code, record, requeued) == (0, "requeued", ["77"]), out
    assert "SIGUSR1: the time limit is near" in out
    for _ in range(2):  # the second time-limit requeue is the last one (timelimit_requeues=2)
        code, record, requeued, out = run_batch(tmp_path, stand_ins(tmp_path, srun), signal_after=1)
    assert (code, record) == (143, "143") and len(requeued) == 2, out
    assert "not requeued: 2 requeue(s) for timelimit already, the limit" in out


def test_failures_are_requeued_up_to_max_retries_and_not_counted_with_time_limits(tmp_path):
    lines = tmp_path / "outputs" / "slurm" / "slurm-77.requeues"
    lines.parent.mkdir(parents=True)
    lines.write_text("timelimit 1 0\ntimelimit 2 1\npreempted 3 2\n")
    code, record, requeued, out = run_batch(tmp_path, stand_ins(tmp_path, "exit 1"), restarts=3)
    assert (code, record, requeued) == (0, "requeued", ["77"]), out  # SLURM_RESTART_COUNT=3 > max_retries=1
    code, record, requeued, out = run_batch(tmp_path, stand_ins(tmp_path, "exit 1"), restarts=4)
    assert (code, record, len(requeued)) == (1, "1", 1), out


def test_a_requeue_that_fails_is_a_failed_job(tmp_path):
    bins = stand_ins(tmp_path, "exit 143", preempt_time="2026-12-07T06:05:22", requeue=1)
    code, record, requeued, out = run_batch(tmp_path, bins)
    assert (code, record) == (1, "1"), out
    assert "error: scontrol requeue 77 failed: the job ends here" in out


def test_scancel_is_cancelled_and_not_requeued(tmp_path):
    srun = "trap 'exit 143' TERM\nsleep 30 >/dev/null & wait"
    code, record, requeued, out = run_batch(tmp_path, stand_ins(tmp_path, srun), signal_after=1, sig=signal.SIGTERM)
    assert (record, requeued) == ("cancelled", []), out
    assert code == 143, out


def test_the_time_limit_reached_without_a_warning_is_requeued(tmp_path):
    srun = "trap 'exit 143' TERM\nsleep 30 >/dev/null & wait"
    bins = stand_ins(tmp_path, srun, end_time="2000-01-01T00:00:00", state="TIMEOUT")
    code, record, requeued, out = run_batch(tmp_path, bins, signal_after=1, sig=signal.SIGTERM)
    assert (record, requeued) == ("requeued", ["77"]), out


# ---- status, list and logs from Slurm's answers


def test_status_reads_the_role_from_the_job_name_and_exit_records(tmp_path, monkeypatch):
    desc = slurm._describe("5", [{"name": "sst2-probe.train-1", "state": "RUNNING"}], "squeue")
    assert desc.roles[0].name == "train" and desc.roles_statuses[0].replicas[0].id == 1
    scheduler = slurm.SlurmScheduler("test")
    monkeypatch.chdir(tmp_path)
    (tmp_path / slurm.LOG_DIR).mkdir(parents=True)
    for record, state in (
        ("cancelled", AppState.CANCELLED),
        ("requeued", AppState.CANCELLED),
        ("killed", AppState.FAILED),
        ("0", None),
    ):
        (tmp_path / slurm.LOG_DIR / "slurm-9.exit").write_text(record + "\n")
        assert scheduler._exit_record("9").state == (state or AppState.SUCCEEDED)


def test_list_asks_for_this_users_jobs_and_the_live_state_wins(tmp_path, monkeypatch):
    calls = []
    answers = {"squeue": "12+0|RUNNING\n12+1|RUNNING\n", "sacct": "12|PENDING\n11|COMPLETED\n"}

    def fake_run(cmd):
        calls.append(cmd)
        return answers[cmd[0]]

    monkeypatch.setattr(slurm, "_run", fake_run)
    monkeypatch.chdir(tmp_path)
    jobs = {j.app_id: j.state for j in slurm.SlurmScheduler("test").list()}
    assert jobs == {"11": AppState.SUCCEEDED, "12": AppState.RUNNING}
    user = f"--user={__import__('getpass').getuser()}"
    assert all(user in cmd for cmd in calls) and {c[0] for c in calls} == {"squeue", "sacct"}


def test_following_logs_survives_a_slurm_that_does_not_answer_for_a_while(tmp_path, monkeypatch):
    """`torchx log -t`: a few unanswered status calls (slurmctld busy) must not end the follow; asked at most
    every STATUS_EVERY_S, however many replicas are followed."""
    monkeypatch.setattr(slurm, "STATUS_EVERY_S", 0.0)
    monkeypatch.setattr(slurm, "UNANSWERED_S", 3.0)
    log = tmp_path / "r.out"
    log.write_text("first\n")
    answers = iter([None, None, None, AppState.RUNNING, AppState.SUCCEEDED])
    scheduler = slurm.SlurmScheduler("test")

    def describe(app_id):
        state = next(answers, AppState.SUCCEEDED)
        if state is AppState.SUCCEEDED:
            log.write_text("first\nlast\n")
        return None if state is None else slurm.DescribeAppResponse(app_id=app_id, state=state)

    monkeypatch.setattr(scheduler, "describe", describe)
    assert list(scheduler._follow("5", [str(log)], tail=True)) == ["first\n", "last\n"]


def test_a_slurm_submit_says_nothing_of_images_or_workspaces():
    out = subprocess.run(
        [sys.executable, "-m", "torchx.cli.main", "run", "--dryrun", "-s", "slurm", "-cfg", "partition=gpu"]
        + ["components/train.py:train", *SMALL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "loaded configs" in out.stderr, out.stderr  # TorchX's log lines are here
    assert "image" not in out.stderr.lower() and "workspace" not in out.stderr.lower(), out.stderr


def test_an_sbatch_refusal_is_one_line_in_slurms_words(tmp_path):
    (tmp_path / "sbatch").write_text(
        "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account or account/partition' >&2\n"
        "exit 1\n"
    )
    (tmp_path / "sbatch").chmod(0o755)
    out = run_torchx(
        "run", "-s", "slurm", "-cfg", "partition=gpu,account=nope", "components/train.py:train", *SMALL,
        env={"PATH": f"{tmp_path}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert (
        "sbatch refused the job (exit 1): sbatch: error: Batch job submission failed: Invalid account or "
        "account/partition" in out.stderr
    )
