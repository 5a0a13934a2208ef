"""`-s kubernetes` (launcher/submit/kubernetes.py) on GKE, the image and the named resources, checked without a cluster.

No apiserver or container engine runs here, so the manifests are validated instead of applied: the Volcano Job
against Volcano's CRD schema (tests/schemas, unknown fields refused as the apiserver would prune them), each pod
template as a v1 Pod with kubernetes-validate (strict), names as the DNS labels they become; the Dockerfile is
linted with hadolint.
"""

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from torchx.runner import get_runner
from torchx.specs import AppDef, InvalidRunConfigException, Resource, Role, VolumeMount, named_resources
from torchx.specs.builders import materialize_appdef
from torchx.specs.finder import ComponentValidationException

from components.evaluate import evaluate
from components.infer import batch_infer
from components.train import train
from launcher.job.ray_cluster import SECRET_ENV
from launcher.submit import kubernetes
from launcher.submit import named_resources as gke
from tests.conftest import ROOT

IMAGE = "us-central1-docker.pkg.dev/p/text-recipes/text-recipes:1"
KUBERNETES = "1.33"
SECRETS = {SECRET_ENV: "ray-secret-" + "5" * 40, "HF_TOKEN": "hf_" + "x" * 34}
SECRET_ENV_CFG = [f"{SECRET_ENV}:text-recipes-ray/secret", "HF_TOKEN:hf-token/token"]
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def _closed(schema):
    """The schema with unknown fields refused where the apiserver would prune them silently."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    return schema


VOLCANO_JOB = _closed(yaml.safe_load((ROOT / "tests" / "schemas" / "volcano_job_v1alpha1.yaml").read_text()))


@pytest.fixture(autouse=True)
def secrets_in_env(monkeypatch):
    """Secrets as a launching shell may hold them: they must reach no job definition."""
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)


def dryrun(app: AppDef, **cfg) -> dict:
    """The Volcano job `torchx run -s kubernetes` would submit, checked as the cluster would check it."""
    manifest = str(get_runner().dryrun(app, "kubernetes", cfg={"queue": "default", "namespace": "ml", **cfg}).request)
    assert not any(value in manifest for value in SECRETS.values())
    job = yaml.safe_load(manifest)
    jsonschema.validate(job, VOLCANO_JOB)
    name = job["metadata"]["name"]
    assert DNS_LABEL.match(name)  # also the job's Service and the pods' subdomain
    for task in job["spec"]["tasks"]:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-{task['name']}-0", **task["template"]["metadata"]},
            "spec": task["template"]["spec"],
        }
        kubernetes_validate.validate(pod, KUBERNETES, strict=True)
        assert DNS_LABEL.match(pod["metadata"]["name"]), pod["metadata"]["name"]  # Volcano's pod name, and its hostname
    return job


def pods(job: dict) -> list:
    return [task["template"]["spec"] for task in job["spec"]["tasks"]]


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- the image -----------------------------------------------------------------------------------------


def test_dockerfile_lints_and_its_workdir_is_the_pods():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    out = subprocess.run(
        [hadolint, "--failure-threshold", "info", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^WORKDIR (\S+)$", dockerfile, re.M) == [kubernetes.WORKDIR]
    stages = re.findall(r"^FROM \S+ AS (\w+)$", dockerfile, re.M)
    assert stages == ["base", "tpu", "default"]  # `docker build .` builds the last: default
    assert re.search(r'"torch==\$\{TORCH_XLA_VERSION\}" \\\n\s+"torch_xla\[tpu\]==\$\{TORCH_XLA_VERSION\}"', dockerfile)


def requirement_names(requirements) -> set:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


@pytest.mark.parametrize("target, groups", [("default", ["gcs", "ray", "onnx"]), ("tpu", ["gcs"])])
def test_each_image_installs_every_package_at_the_version_of_its_constraints(target, groups):
    """Two builds a month apart get the same packages: everything but torch (and the CUDA libraries its wheel pins)
    is pinned exactly, and each pip install that resolves dependencies reads the constraints."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "constraints" / f"{target}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line).groups()
            pins[name.lower().replace("_", "-")] = version
    wanted = requirement_names(
        project["dependencies"] + [r for g in groups for r in project["optional-dependencies"][g]]
    )
    assert wanted - {"torch"} <= set(pins), wanted - set(pins)
    assert not {"torch", "triton"} & set(pins) and not any(p.startswith("nvidia-") for p in pins)
    if target == "tpu":
        assert pins["torch-xla"] == "2.9.0" and "libtpu" in pins
    stage = (ROOT / "Dockerfile").read_text().split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
    installs = [i for i in re.split(r"pip install", stage)[1:] if "-r /tmp/requirements" in i]
    assert installs and all(f"-c constraints/{target}.txt" in i for i in installs)
    assert all(f"-r /tmp/requirements-{g}.txt" in stage for g in ["project", *groups])


def test_the_default_image_is_a_cuda_12_build_and_every_build_command_names_its_platform():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_CUDA=cu12\d$", dockerfile, re.M)
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==${TORCH_VERSION}"' in dockerfile
    builds = [
        build
        for text in ((ROOT / "README.md").read_text(), (ROOT / "docs/schedulers/kubernetes.md").read_text(), dockerfile)
        for build in re.findall(r"docker build[^\n]*", text)
    ]
    assert len(builds) >= 5 and all("--platform linux/amd64" in b for b in builds), builds


def test_dockerignore_keeps_what_the_pods_run():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    for needed in (
        "run.py",
        "pyproject.toml",
        "README.md",
        "conf/train.yaml",
        "data/support_tickets/train.csv",
        "constraints/default.txt",
        "constraints/tpu.txt",
        "launcher/submit/kubernetes.py",
        "recipes/train.py",
        "components/train.py",
    ):
        assert not any(fnmatch.fnmatch(needed, p) or needed.startswith(p.rstrip("/") + "/") for p in patterns), needed


def test_cli_dryrun_needs_no_workspace_and_takes_the_image_from_torchxconfig():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchx.cli.main",
            "run",
            "--dryrun",
            "-s",
            "kubernetes",
            "components/evaluate.py:evaluate",
            "--checkpoint",
            "gs://b/runs/r1/model",
            "-h",
            "gke_l4_1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    job = yaml.safe_load(out.stdout.split("=== SCHEDULER REQUEST ===", 1)[1])
    (container,) = pods(job)[0]["containers"]
    config = (ROOT / ".torchxconfig").read_text()
    assert f"image = {container['image']}" in config and container["workingDir"] == "/app"
    for component in (
        "components/train.py:train",
        "components/evaluate.py:evaluate",
        "components/infer.py:batch_infer",
        "text_recipes.train.train",
        "text_recipes.evaluate.evaluate",
        "text_recipes.infer.batch_infer",
    ):
        assert f"[component:{component}]\nimage = {container['image']}\n" in config


# --- named resources -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, hosts, accelerator, host_bounds, chips_bounds",
    [
        ("gke_tpu_v5e_2x4", 1, "v5litepod-8", (1, 1, 1), (2, 4, 1)),
        ("gke_tpu_v5e_4x4", 4, "v5litepod-16", (2, 2, 1), (2, 2, 1)),
        ("gke_tpu_v6e_16x16", 64, "v6e-256", (8, 8, 1), (2, 2, 1)),
        ("gke_tpu_v5p_2x2x2", 2, "v5p-16", (1, 1, 2), (2, 2, 1)),
        ("gke_tpu_v4_2x4x4", 8, "v4-64", (1, 2, 4), (2, 2, 1)),
    ],
)
def test_tpu_slices(name, hosts, accelerator, host_bounds, chips_bounds):
    tpu = gke.tpu_slice(named_resources[name])
    assert (tpu.hosts, tpu.accelerator_type, tpu.host_bounds, tpu.chips_per_host_bounds) == (
        hosts,
        accelerator,
        host_bounds,
        chips_bounds,
    )
    assert named_resources[name].devices == {gke.TPU: tpu.chips_per_host}
    assert gke.tpu_slice(named_resources["gke_l4_1"]) is None


def test_cpu_and_memory_flags_override_the_per_gpu_default():
    role = materialize_appdef(train, ["--gpu", "8", "--cpu", "10", "--memMB", "50000"]).roles[0]  # as the CLI passes
    assert (role.resource.cpu, role.resource.memMB) == (10, 50000)
    resource = train(output_dir="gs://b/r").roles[0].resource
    assert (resource.cpu, resource.memMB) == (2, 8192)


# --- the manifests -------------------------------------------------------------------------------------


def test_train_on_a_gpu_pool():
    app = materialize_appdef(
        train,
        [
            "--nnodes",
            "2",
            "--nproc_per_node",
            "8",
            "-h",
            "gke_a100_80gb_8",
            "--image",
            IMAGE,
            "--output_dir",
            "gs://b/runs/r1",
            "--",
            "trainer.max_steps=100",
        ],
    )
    job = dryrun(app, service_account="text-recipes", secret_env=SECRET_ENV_CFG[1:])
    assert job["spec"]["minAvailable"] == 2 and job["spec"]["schedulerName"] == "volcano"
    for replica, spec in enumerate(pods(job)):
        (container,) = spec["containers"]
        assert spec["serviceAccountName"] == "text-recipes"
        assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"}
        assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        limits = container["resources"]["limits"]
        assert (limits["cpu"], limits["memory"], limits["nvidia.com/gpu"]) == ("94000m", "1398411M", "8")
        assert container["image"] == IMAGE and container["workingDir"] == "/app"
        args = shlex.split(container["command"][2])
        assert args[args.index("--rdzv_endpoint") + 1] == (
            "${TORCHX_RANK0_HOST:=localhost}:0" if replica == 0 else "${VC_TRAIN_0_HOSTS:=localhost}:0"
        )
        assert args[args.index("run.py") :] == ["run.py", "train", "trainer.max_steps=100", "output_dir=gs://b/runs/r1"]
        env = env_of(container)
        assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
        assert "PJRT_DEVICE" not in env and SECRET_ENV not in env


def test_train_on_a_two_host_tpu_slice():
    app = materialize_appdef(
        train,
        [
            "--nnodes",
            "2",
            "--nproc_per_node",
            "4",
            "-h",
            "gke_tpu_v5p_2x2x2",
            "--image",
            f"{IMAGE}-tpu",
            "--output_dir",
            "gs://b/runs/tpu",
        ],
    )
    job = dryrun(app, service_account="text-recipes")
    name = job["metadata"]["name"]
    assert job["spec"]["minAvailable"] == 2  # gang: both hosts of the slice or none
    hosts = ",".join(f"{name}-{task['name']}-0.{name}" for task in job["spec"]["tasks"])
    for worker, spec in enumerate(pods(job)):
        (container,) = spec["containers"]
        assert spec["nodeSelector"] == {
            "cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
            "cloud.google.com/gke-tpu-topology": "2x2x2",
        }
        assert spec["tolerations"] == [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert (
            container["resources"]["limits"]["google.com/tpu"] == "4"
            and "nvidia.com/gpu" not in container["resources"]["limits"]
        )
        env = env_of(container)
        assert {k: env[k] for k in env if k.startswith(("TPU_", "PJRT_"))} == {
            "PJRT_DEVICE": "TPU",
            "TPU_SKIP_MDS_QUERY": "1",
            "TPU_ACCELERATOR_TYPE": "v5p-16",
            "TPU_HOST_BOUNDS": "1,1,2",
            "TPU_CHIPS_PER_HOST_BOUNDS": "2,2,1",
            "TPU_WORKER_ID": str(worker),
            "TPU_WORKER_HOSTNAMES": hosts,
        }
        assert container["workingDir"] == "/app" and spec["serviceAccountName"] == "text-recipes"


def slice_placement(job: dict) -> list:
    """(labels, affinity) of each pod."""
    return [(t["template"]["metadata"]["labels"], t["template"]["spec"].get("affinity")) for t in job["spec"]["tasks"]]


def test_a_multi_host_tpu_job_takes_one_node_pool_that_no_other_slice_job_holds():
    def job(name):
        app = train(h="gke_tpu_v5p_2x2x2", nnodes=2, output_dir="gs://b/r", image=IMAGE, name=name)
        return dryrun(app)

    first, second = job("slice-a"), job("slice-b")
    for manifest, other in ((first, second), (second, first)):
        name = manifest["metadata"]["name"]
        for labels, affinity in slice_placement(manifest):
            assert labels[kubernetes.SLICE_LABEL] == name and labels[kubernetes.JOB_LABEL] == name
            (together,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            (apart,) = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert together["topologyKey"] == apart["topologyKey"] == "cloud.google.com/gke-nodepool"
            # the selectors, evaluated as the scheduler does on the labels of this job's and the other job's pods
            for own_labels, _ in slice_placement(manifest):
                assert selects(together["labelSelector"], own_labels) and not selects(
                    apart["labelSelector"], own_labels
                )
            for other_labels, _ in slice_placement(other):
                assert selects(apart["labelSelector"], other_labels) and not selects(
                    together["labelSelector"], other_labels
                )


def test_single_host_slices_and_gpu_jobs_are_placed_by_their_selectors_alone():
    for app in (
        train(h="gke_tpu_v5e_2x2", output_dir="gs://b/r", image=IMAGE),
        train(h="gke_h100_80gb_8", nnodes=2, output_dir="gs://b/r", image=IMAGE),
    ):
        for labels, affinity in slice_placement(dryrun(app)):
            assert affinity is None and kubernetes.SLICE_LABEL not in labels


def selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes LabelSelector (matchLabels, matchExpressions with In, NotIn, Exists) against a pod's labels."""
    ops = {
        "In": lambda e: labels.get(e["key"]) in e["values"],
        "NotIn": lambda e: labels.get(e["key"]) not in e["values"],
        "Exists": lambda e: e["key"] in labels,
    }
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
        ops[e["operator"]](e) for e in selector.get("matchExpressions", [])
    )


def test_batch_infer_on_a_gpu_pool_three_replicas_one_ray_cluster():
    app = batch_infer(
        "output_format=jsonl",
        model="gs://b/m",
        input="gs://b/in/*.jsonl",
        output="gs://b/out",
        nnodes=3,
        h="gke_l4_1",
        image=IMAGE,
    )
    job = dryrun(app, service_account="text-recipes", secret_env=SECRET_ENV_CFG)
    name = job["metadata"]["name"]
    assert job["spec"]["minAvailable"] == 3 and [t["name"] for t in job["spec"]["tasks"]] == [
        "infer-0",
        "infer-1",
        "infer-2",
    ]
    heads = []
    for replica, spec in enumerate(pods(job)):
        (container,) = spec["containers"]
        assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        assert container["resources"]["limits"] == {"cpu": "2000m", "memory": "11646M", "nvidia.com/gpu": "1"}
        args = shlex.split(container["command"][2])
        assert args[:3] == ["python3", "-m", "launcher.job.ray_cluster"]
        assert [
            args[args.index(flag) + 1] for flag in ("--replica-id", "--nnodes", "--job-id", "--cpus", "--gpus")
        ] == [str(replica), "3", name, "2", "1"]
        assert args[args.index("--") + 1 :] == [
            "python3",
            "run.py",
            "infer",
            "gpus_per_actor=1",
            "output_format=jsonl",
            "model_dir=gs://b/m",
            "input=gs://b/in/*.jsonl",
            "output=gs://b/out",
        ]
        assert not container.get("ports")  # the head's port is derived from the job id in the pod (port 0)
        env = env_of(container)
        assert (
            env[SECRET_ENV] == {"secretKeyRef": {"name": "text-recipes-ray", "key": "secret"}}
            and "RAY_AUTH_TOKEN" not in env
        )
        heads.append(args[args.index("--head") + 1])
    # replica 0 is the head; the others find it through Volcano's per-task host list
    assert heads == ["${TORCHX_RANK0_HOST:=localhost}:0"] + ["${VC_INFER_0_HOSTS:=localhost}:0"] * 2


def test_submit_sends_the_checked_job_and_needs_no_docker():
    class CustomObjects:
        def create_namespaced_custom_object(self, **request):
            self.request = request
            return {"metadata": {"name": request["body"]["metadata"]["name"]}}

    scheduler = kubernetes.create_scheduler("test")
    info = scheduler.submit_dryrun(
        train(output_dir="gs://b/r", h="gke_l4_1", image=IMAGE),
        scheduler.run_opts().resolve({"queue": "default", "namespace": "ml"}),
    )
    api = CustomObjects()
    scheduler._volcano._custom_objects_api = lambda: api
    assert scheduler.schedule(info) == f"ml:{info.request.resource['metadata']['name']}"
    assert (api.request["group"], api.request["version"], api.request["plural"], api.request["namespace"]) == (
        "batch.volcano.sh",
        "v1alpha1",
        "jobs",
        "ml",
    )
    assert api.request["body"]["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["workingDir"] == "/app"


def test_names_stay_dns_labels_of_at_most_63_characters():
    name = "a" + "-long-name" * 3 + "-1234"  # 36 characters, the components' longest
    job = dryrun(evaluate(checkpoint="gs://b/r/model", name=name, image=IMAGE))
    # <name>-<random id, up to 14>-evaluate-0-0 would be 64 characters: the name loses one
    assert job["metadata"]["name"].rsplit("-", 1)[0] == name[:35]
    role = Role(
        name="worker", image=IMAGE, entrypoint="echo", num_replicas=100, resource=Resource(cpu=1, gpu=0, memMB=512)
    )
    job = dryrun(AppDef(name="x" * 80, roles=[role]))
    assert max(len(f"{job['metadata']['name']}-{t['name']}-0") for t in job["spec"]["tasks"]) <= 63
    for bad, message in (("1st", "app name '1st'"), ("ok", "role name 'Worker_1'")):
        app = AppDef(
            name=bad, roles=[Role(name="Worker_1" if bad == "ok" else "worker", image=IMAGE, entrypoint="echo")]
        )
        with pytest.raises(ComponentValidationException, match=re.escape(message)):
            dryrun(app)


# --- refused before the job waits for nodes ------------------------------------------------------------


@pytest.mark.parametrize(
    "app, message",
    [
        (lambda: train(image=IMAGE), "--output_dir outputs/minilm-support_tickets: a path inside the pod"),
        (lambda: train(output_dir="/data/run", image=IMAGE), "--output_dir /data/run: a path inside the pod"),
        (
            lambda: evaluate(checkpoint="outputs/r1/model", image=IMAGE),
            "--checkpoint outputs/r1/model: a path inside the pod",
        ),
        (
            lambda: batch_infer(model="gs://b/m", input="gs://b/in.csv", output="preds/", image=IMAGE),
            "--output preds/: a path inside the pod",
        ),
        (
            lambda: batch_infer(model="gs://b/m", input="gs://b/in.csv", output="gs://b/o", nnodes=2, image=IMAGE),
            f"{SECRET_ENV}: this job reads it from a Kubernetes Secret; add -cfg secret_env={SECRET_ENV}:SECRET/KEY",
        ),
        (
            lambda: train(h="gke_tpu_v5e_4x4", output_dir="gs://b/r", image=IMAGE),
            "a v5litepod-16 slice has 4 host(s), one replica each; run 4 replicas",
        ),
    ],
)
def test_refused_at_dryrun_in_one_line(app, message):
    with pytest.raises(ComponentValidationException, match=re.escape(message)) as e:
        dryrun(app())
    assert "\n" not in str(e.value)


def test_secret_env_is_env_secret_key():
    app = train(output_dir="gs://b/r", image=IMAGE)
    for bad in ("HF_TOKEN", "HF_TOKEN:hf-token", "HF TOKEN:s/k", "HF_TOKEN:Secret/k", "HF_TOKEN=hf-token/token"):
        with pytest.raises(InvalidRunConfigException, match="secret_env"):
            dryrun(app, secret_env=[bad])


def test_local_outputs_under_a_mounted_volume_are_kept():
    app = train(output_dir="/mnt/runs/r1", image=IMAGE)
    with pytest.raises(ComponentValidationException, match="a path inside the pod"):
        dryrun(app)
    app.roles[0].mounts = [VolumeMount(src="runs", dst_path="/mnt/runs")]  # a PersistentVolumeClaim
    (container,) = pods(dryrun(app))[0]["containers"]
    assert {"name": "mount-0", "mountPath": "/mnt/runs", "readOnly": False} in container["volumeMounts"]


# --- the pod overlay convention of newer TorchX (Role.metadata["kubernetes"]) ----------------------------


def overlaid(overlay) -> dict:
    app = train(h="gke_l4_1", output_dir="gs://b/r", image=IMAGE)
    app.roles[0].metadata["kubernetes"] = overlay
    return pods(dryrun(app))[0]


def test_overlay_dicts_merge_lists_append_values_overwrite():
    spec = overlaid(
        {
            "spec": {
                "nodeSelector": {"cloud.google.com/gke-spot": "true"},
                "priorityClassName": "batch",
                "tolerations": [{"key": "cloud.google.com/gke-spot", "operator": "Exists", "effect": "NoSchedule"}],
            },
            "metadata": {"labels": {"team": "nlp"}},
        }
    )
    assert spec["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4",
        "cloud.google.com/gke-spot": "true",
    }
    assert [t["key"] for t in spec["tolerations"]] == ["nvidia.com/gpu", "cloud.google.com/gke-spot"]
    assert spec["priorityClassName"] == "batch"
    nested = overlaid(
        {"__torchx_overlays__": True, "V1Pod": {"spec": {"tolerations": ()}}}
    )  # set_overlay's format; a tuple replaces
    assert nested["tolerations"] == []
    with pytest.raises(ComponentValidationException, match="PUT/JOIN/DEL"):
        overlaid({"spec": {"__put__:tolerations": []}})


def test_overlay_from_a_yaml_file(tmp_path):
    path = tmp_path / "overlay.yaml"
    path.write_text(
        "spec:\n  volumes: !!python/tuple\n    - name: dshm\n      emptyDir: {medium: Memory, sizeLimit: 64Gi}\n"
        "  securityContext: {fsGroup: 1000}\n"
    )
    for uri in (str(path), f"file://{path}"):
        spec = overlaid(uri)
        assert spec["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}]
        assert spec["securityContext"] == {"fsGroup": 1000}


def test_the_scheduler_config_of_the_quickstart_lets_the_autoscaler_scale_from_zero():
    """No `enqueue` (PodGroups would stay Pending, pods uncreated, with no idle nodes), still gang scheduling; and the
    quickstart applies this file."""
    conf = yaml.safe_load((ROOT / "docs" / "schedulers" / "volcano-scheduler.conf").read_text())
    actions = [a.strip() for a in conf["actions"].split(",")]
    plugins = [p["name"] for tier in conf["tiers"] for p in tier["plugins"]]
    assert "enqueue" not in actions and actions[0] == "allocate"
    assert "gang" in plugins and "predicates" in plugins and "overcommit" not in plugins
    guide = (ROOT / "docs" / "schedulers" / "kubernetes.md").read_text()
    assert "--from-file=volcano-scheduler.conf=docs/schedulers/volcano-scheduler.conf" in guide
