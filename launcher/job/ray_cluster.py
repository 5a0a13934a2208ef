"""One Ray cluster across a job's replicas, running a driver command on replica 0 (`batch_infer`'s bootstrap).

    python3 -m launcher.job.ray_cluster --replica-id R --nnodes N --head HOST:PORT --job-id ID \\
        [--cpus C] [--gpus G] [--join-timeout S] -- python3 run.py infer key=value ...

Replica 0 starts the Ray head on PORT, waits until the nodes of all N replicas joined, runs the
command with RAY_ADDRESS set, stops its node and exits with the command's status. Every other
replica joins the head at HOST:PORT and, once the head is gone (the driver ended), stops its node
and exits 0. Each node has its own temp dir and random ports, so replicas can share a machine.
PORT 0 is job_port(ID) (launcher/job/ports.py), which every replica derives alike, so two jobs on one
machine do not collide; a job of one replica, which no other has to find, takes a free port instead.
SIGTERM, SIGINT and SIGUSR1 (Slurm's warning before the time limit) stop the replica and its node.

Ray runs with token authentication (RAY_AUTH_MODE=token). A job of one replica gets a random token.
The replicas of a larger job each derive the same one, HMAC-SHA256(secret, job id), from a secret
that is $TEXT_RECIPES_RAY_SECRET (on Kubernetes, from a Secret) or else ~/.config/text-recipes/ray-secret
(made on first use, mode 0600; a home directory the replicas share, as on Slurm, gives them all the same).
The token is only in a 0600 file of this replica's private temp dir, which RAY_AUTH_TOKEN_PATH names:
never in the job definition, a command line or a log.
"""

import argparse
import ctypes
import hashlib
import hmac
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

from launcher.job.ports import DERIVED, job_port
from recipes.devices import check_gpus
from recipes.errors import RecipeError

SECRET_ENV = "TEXT_RECIPES_RAY_SECRET"
SECRET_FILE = Path.home() / ".config" / "text-recipes" / "ray-secret"
POLL_S = 1.0
HEAD_GONE_AFTER_S = 3.0  # how long the head's port must refuse before a worker concludes the job is over
STOP_GRACE_S = 30.0


class ClusterError(Exception):
    """Why the cluster cannot run, in one line."""


class Terminated(Exception):
    """A signal asked this replica to stop."""

    def __init__(self, signum: int):
        self.signum = signum


def cluster_secret() -> bytes:
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].encode()
    if not SECRET_FILE.exists():
        try:
            _create_secret_file()
        except OSError as e:
            raise ClusterError(f"cannot create {SECRET_FILE} ({e.strerror}); set {SECRET_ENV} instead") from None
    if SECRET_FILE.stat().st_mode & 0o077:
        raise ClusterError(f"{SECRET_FILE}: other users can read it; chmod 600 {SECRET_FILE}")
    secret = SECRET_FILE.read_bytes().strip()
    if not secret:
        raise ClusterError(f"{SECRET_FILE} is empty; delete it to have a new secret made")
    return secret


def _create_secret_file() -> None:
    SECRET_FILE.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=SECRET_FILE.parent)  # mode 0600
    try:
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
        # create-if-absent, atomic also on NFS: replicas that race here all end up reading the winner's secret
        try:
            os.link(tmp, SECRET_FILE)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def job_token(secret: bytes, job_id: str) -> str:
    return hmac.new(secret, job_id.encode(), hashlib.sha256).hexdigest()


def replica_token(nnodes: int, job_id: str) -> str:
    if nnodes == 1:  # no other replica has to agree on it
        return secrets.token_hex(32)
    if "KUBERNETES_SERVICE_HOST" in os.environ and not os.environ.get(SECRET_ENV):
        raise ClusterError(f"on Kubernetes the replicas share no home directory: set {SECRET_ENV} from a Secret")
    return job_token(cluster_secret(), job_id)


def use_token(token: str, workdir: Path) -> None:
    """Token auth for this process (its GCS client) and its children (Ray nodes, the driver)."""
    path = workdir / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.environ.pop(SECRET_ENV, None)  # Ray workers inherit the environment; they need the token file only
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over RAY_AUTH_TOKEN_PATH
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(path))


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# looked up before any fork: the child of a threaded process must not take the loader's locks
_prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    # A child left behind by a SIGKILLed replica would keep a Ray node (ports, CPUs, a joined cluster) alive.
    if _prctl:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _become_subreaper() -> None:
    # the node's daemons are orphaned when `ray start` exits: they become this process's children, to be reaped here
    if _prctl:
        _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RayNode:
    """`ray start --block` in this replica's temp dir: the node lives until stop(), or this process, ends."""

    def __init__(self, workdir: Path, role_args: List[str], cpus: int, gpus: int):
        self.output = workdir / "ray-start.log"  # Ray's startup banner would bury the job's own output
        self.cmd = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--block",
            *role_args,
            f"--temp-dir={workdir / 'ray'}",
            f"--num-cpus={cpus}",
            f"--num-gpus={gpus}",
            "--disable-usage-stats",
            # random ports: several nodes (replicas, jobs) on one machine must not collide
            "--node-manager-port=0",
            "--object-manager-port=0",
            "--dashboard-agent-listen-port=0",
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "RayNode":
        env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        }  # a node stops when the job is over: nothing to drain
        with open(self.output, "wb") as out:
            # a session of its own: every process of the node is in one group that stop() can sweep
            self.proc = subprocess.Popen(
                self.cmd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self

    def failure(self) -> Optional[str]:
        """Why the node exited, if it did."""
        if self.proc.poll() is None:
            return None
        lines = self.output.read_text(errors="replace").strip().splitlines() or ["no output"]
        if any("InvalidAuthToken" in line for line in lines):
            return (
                f"the Ray head refused this replica's token: the replicas do not share one Ray secret "
                f"(set {SECRET_ENV} from one Secret, or share {SECRET_FILE})"
            )
        return f"`ray start` exited with code {self.proc.returncode}: {lines[-1].strip()}"

    def __exit__(self, *exc) -> None:
        stop(self.proc)
        try:  # Ray's agents can outlive their raylet by minutes
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        # this replica exits once its node is gone (ports and CPUs free for the next job), reaping what this process
        # inherits as their subreaper; bounded, in case one ignores SIGKILL in the kernel (D state)
        deadline = time.monotonic() + STOP_GRACE_S
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            _reap()
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """A process of group `pgid` is still running (not a zombie)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:  # "pid (comm) state ppid pgrp ...": comm may hold spaces
                state, _, group = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if state != "Z" and int(group) == pgid:
            return True
    return False


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def wait_for_nodes(node: RayNode, host: str, port: int, nnodes: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not reachable(host, port):
        _check_head(node)
        if time.monotonic() > deadline:
            raise ClusterError(f"the Ray head did not open port {port} within {timeout:.0f} s")
        time.sleep(POLL_S)
    # the GCS client of Ray's own CLI: ray.init() would make this process a driver and take over its SIGTERM
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    gcs = GcsClient(address=f"{host}:{port}")
    deadline = time.monotonic() + timeout  # the other replicas start joining once the head is up
    while True:
        alive = sum(n.state == GcsNodeInfo.ALIVE for n in gcs.get_all_node_info(timeout=10).values())
        if alive >= nnodes:
            return
        _check_head(node)
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{alive} of {nnodes} Ray nodes joined the head at {host}:{port} within {timeout:.0f} s: "
                "are the other replicas running, and can they reach that port?"
            )
        time.sleep(POLL_S)


def _check_head(node: RayNode) -> None:
    failure = node.failure()
    if failure:
        raise ClusterError(f"the Ray head did not start: {failure}")


def run_head(args: argparse.Namespace, command: List[str], workdir: Path) -> int:
    host, port = args.head
    if reachable(host, port):  # Ray's own failure here is a traceback about authentication, minutes later
        raise ClusterError(
            f"port {port} on {host} is taken, so the Ray head cannot start there: a Ray head left by a job killed "
            "moments ago (it exits within a minute), or another service; wait, or give another --ray_port "
            "(0 derives one from the job id)"
        )
    head_args = [
        "--head",
        f"--port={port}",
        "--include-dashboard=false",
        "--dashboard-host=127.0.0.1",
        # Ray's client server and dashboard API are served on the head whatever the flags; free ports keep jobs apart
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-port={free_port()}",
    ]
    with RayNode(workdir, head_args, args.cpus, args.gpus) as node:
        wait_for_nodes(node, host, port, args.nnodes, args.join_timeout)
        _say(f"{args.nnodes} Ray node(s) up, head at {host}:{port}; running {' '.join(command)}")
        driver = subprocess.Popen(
            command, env={**os.environ, "RAY_ADDRESS": f"{host}:{port}"}, preexec_fn=_die_with_parent
        )
        try:
            code = driver.wait()
        finally:
            stop(driver)
    return code if code >= 0 else 128 - code


def run_worker(args: argparse.Namespace, workdir: Path) -> int:
    host, port = args.head
    deadline = time.monotonic() + args.join_timeout
    while not reachable(host, port):
        if time.monotonic() > deadline:
            raise ClusterError(f"no Ray head at {host}:{port} within {args.join_timeout:.0f} s (replica 0 starts it)")
        time.sleep(POLL_S)
    with RayNode(workdir, [f"--address={host}:{port}"], args.cpus, args.gpus) as node:
        _say(f"Ray node starting, joining the head at {host}:{port}")
        head_gone_since = None
        while True:
            time.sleep(POLL_S)
            if reachable(host, port):
                head_gone_since = None
                failure = node.failure()
                if failure:
                    raise ClusterError(f"this replica's Ray node stopped while the head is up: {failure}")
            elif head_gone_since is None:
                head_gone_since = time.monotonic()
            elif time.monotonic() - head_gone_since >= HEAD_GONE_AFTER_S:
                _say(f"the Ray head at {host}:{port} is gone (the driver ended); leaving")
                return 0


def _say(message: str) -> None:
    print(f"ray_cluster: {message}", file=sys.stderr, flush=True)


def _address(value: str) -> Tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT (PORT 0: derived from the job id)")
    return host, int(port)


def parse(argv: List[str]) -> Tuple[argparse.Namespace, List[str]]:
    parser = argparse.ArgumentParser(prog="python3 -m launcher.job.ray_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--replica-id", type=int, required=True, help="0 runs the head and the driver")
    parser.add_argument("--nnodes", type=int, required=True, help="replicas (Ray nodes) the driver waits for")
    parser.add_argument(
        "--head", type=_address, required=True, help="HOST:PORT of the head's GCS; PORT 0: derived from --job-id"
    )
    parser.add_argument("--job-id", required=True, help="identifies the job; the Ray token is derived from it")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs this node offers to Ray")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs this node offers to Ray")
    parser.add_argument("--join-timeout", type=float, default=600, help="seconds to wait for the other replicas")
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1 :]
    if args.replica_id == 0 and not command:
        parser.error("replica 0 needs the driver command after --")
    host, port = args.head
    if port == DERIVED:
        args.head = host, job_port(args.job_id) if args.nnodes > 1 else free_port()
    return args, command


def _terminate(signum, frame):
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the teardown short
    raise Terminated(signum)


def main(argv: Optional[List[str]] = None) -> None:
    args, command = parse(sys.argv[1:] if argv is None else argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):  # SIGUSR1: Slurm's --signal before the time limit
        signal.signal(sig, _terminate)
    _become_subreaper()
    workdir = Path(tempfile.mkdtemp(prefix="tr-ray-"))  # short: Ray's unix sockets live under it
    keep_logs = False
    try:
        if args.gpus:  # a replica given GPUs that torch cannot use stops before Ray starts (recipes/devices.py)
            check_gpus(args.gpus, str(args.gpus), "--gpus")
        use_token(replica_token(args.nnodes, args.job_id), workdir)
        code = run_head(args, command, workdir) if args.replica_id == 0 else run_worker(args, workdir)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        code, keep_logs = 1, True
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except Terminated as t:
        code = 128 + t.signum
    finally:
        (workdir / "token").unlink(missing_ok=True)
        if keep_logs:
            _say(f"Ray's output and logs are in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
