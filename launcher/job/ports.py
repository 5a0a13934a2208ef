"""The port a multi-node job's rendezvous (torchrun's c10d store) or Ray head listens on, derived from its job id.

Two jobs on one node (Slurm nodes shared between jobs, local_cwd) collide on a fixed port. A port that
every replica computes from the job id alone needs no agreement between them, and two jobs get the same
port only by chance (1 in PORT_COUNT). A requeued Slurm job keeps its id, hence its port.

The range, 20000-32767, lies below Linux's ephemeral ports (net.ipv4.ip_local_port_range, 32768-60999 by
default), from which the kernel hands out outgoing connections' and `bind(0)`'s ports (Ray's other ports,
torchrun's single-node store), and above Ray's and torch's usual fixed ports (6379, 8265, 10001).

Standard library only: the submit side and each replica import it.
"""

import hashlib

PORT_BASE = 20000
PORT_COUNT = 32768 - PORT_BASE
DERIVED = 0  # a component's --rdzv_port / --ray_port that means "job_port(the job id)"


def job_port(job_id: str) -> int:
    """The port of the job `job_id`: the same on every replica and every run, in [PORT_BASE, PORT_BASE + PORT_COUNT)."""
    digest = hashlib.sha256(job_id.encode()).digest()
    return PORT_BASE + int.from_bytes(digest[:8], "big") % PORT_COUNT


def resolve(address: str, job_id: str) -> str:
    """HOST:PORT as given, or HOST:job_port(job_id) where PORT is 0."""
    host, sep, port = address.rpartition(":")
    if sep and host and port == str(DERIVED):
        return f"{host}:{job_port(job_id)}"
    return address
