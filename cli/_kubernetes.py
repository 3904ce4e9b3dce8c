"""Kubernetes manifests for the server and the GPU workers, rendered from one values file.

`sweeper k8s render --values values.yaml | kubectl apply -f -` needs nothing but this package: no Helm,
no templates. The values say what differs between clusters (image, Secrets' names, the logs' volume or
bucket, the worker groups and their GPUs); everything a deployment depends on is decided here once:

- the server is a Deployment behind a Service, its database URL and tokens read from Secrets (never
  written into a manifest), with startup, readiness and liveness probes on `/healthz`;
- each worker group is a Deployment of pods, each limited to `gpus` of `nvidia.com/gpu` and running
  `sweeper worker --gpus all` (the device plugin shows a pod only its own GPUs), with the worker token
  from a Secret and the logs on the same volume (or bucket) as the server's;
- a worker pod's `terminationGracePeriodSeconds` outlasts the longest epoch: a drained node's pods get
  SIGTERM, each worker finishes its epoch and hands its trial back, and another pod resumes it from that
  epoch's checkpoint. A shorter grace period would kill the epoch halfway and lose it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rich.markup import escape

from cli._common import console, errors, fail
from sweeper import yaml_lines

RELEASE_MARGIN_SECONDS = 60
"""What a stopping worker needs after its last epoch: its checkpoint, the flushed logs, the release call."""
SERVER_PORT = 8000
GCS_KEY_FOLDER = "/var/run/secrets/sweeper-gcs"
GCS_KEY_FILE = "key.json"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

Quantities = dict[str, str | int]
"""A container's requests or limits, as Kubernetes writes them: {"cpu": "2", "memory": "8Gi"}."""


class _Values(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _dns_label(value: str, max_length: int = 40) -> str:
    # Names become parts of object names ("<name>-worker-<group>"), which must stay DNS labels.
    if len(value) > max_length or not _DNS_LABEL.fullmatch(value):
        raise ValueError(f"must be a DNS label of at most {max_length} characters (lower-case letters, digits "
                         f"and '-', starting and ending with a letter or digit), but got {value!r}")
    return value


class Image(_Values):
    repository: str = "sweeper"
    tag: str = "latest"
    """The image docker-compose.yml builds (`docker compose build`), pushed where the cluster pulls from."""
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"


class SecretKey(_Values):
    """One key of a Secret that the operator creates (`kubectl create secret generic ...`)."""

    name: str
    key: str


class Secrets(_Values):
    database_url: SecretKey = SecretKey(name="sweeper-database", key="url")
    """A SQLAlchemy URL of PostgreSQL (postgresql+psycopg://user:password@host:5432/sweeper)."""
    admin_token: SecretKey = SecretKey(name="sweeper-tokens", key="admin-token")
    worker_token: SecretKey = SecretKey(name="sweeper-tokens", key="worker-token")


class Server(_Values):
    replicas: Annotated[int, Field(ge=1, le=64)] = 1
    """Server processes sharing the PostgreSQL database (see docs/deploy.md for when to add one)."""
    lease_seconds: Annotated[float, Field(gt=0)] | None = None
    """A silent worker's trial goes to another after this long (the server's default: 60 s)."""
    resources: dict[Literal["requests", "limits"], Quantities] = {
        "requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}


class Logs(_Values):
    """Where the server and every worker read and write the TensorBoard logs and checkpoints: one
    ReadWriteMany volume mounted in every pod, or an object store URL (then no volume)."""

    url: str | None = None
    """gs://bucket/prefix: the logs in an object store; `claim_name`, `create`, `size` are then unused."""
    credentials_secret: str | None = None
    """With `url`: a Secret whose key `key.json` is a service account key for the bucket (left out: the
    node's or the workload identity's credentials)."""
    claim_name: str = "sweeper-runs"
    """The PersistentVolumeClaim mounted at /runs in the server and every worker."""
    create: bool = True
    """Create the claim (ReadWriteMany, `size`, `storage_class`); false: use an existing one."""
    size: str = "100Gi"
    storage_class: str | None = None
    """A class that offers ReadWriteMany (NFS, CephFS, Filestore, EFS...); left out: the cluster's default."""

    @field_validator("url")
    @classmethod
    def _a_url(cls, url: str | None) -> str | None:
        if url is not None and "://" not in url:
            raise ValueError(f"must be an object store URL like gs://bucket/prefix, but got {url!r}; a folder is "
                             f"given as a volume (claim_name)")
        return url

    @model_validator(mode="after")
    def _credentials_need_a_url(self) -> Logs:
        if self.credentials_secret is not None and self.url is None:
            raise ValueError("credentials_secret is for an object store: set url too, or leave it out")
        return self


class Data(_Values):
    claim_name: str | None = None
    """A claim with the file datasets (npz:, images:), mounted read-only at /data in every worker."""


class WorkerGroup(_Values):
    """Pods of one kind of GPU node: each takes `gpus` GPUs and runs one worker process per GPU."""

    name: str = "gpu"
    replicas: Annotated[int, Field(ge=0, le=10_000)] = 2
    gpus: Annotated[int, Field(ge=0, le=64)] = 1
    """`nvidia.com/gpu` per pod. 0: CPU workers (`cpu_workers` of them), for a cluster without GPUs."""
    cpu_workers: Annotated[int, Field(ge=1, le=256)] = 1
    trials_per_gpu: Annotated[int, Field(ge=1, le=16)] = 1
    longest_epoch_seconds: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = 600
    """The longest epoch of the sweeps this group trains: a pod being stopped gets this long (plus a
    margin) to finish its epoch and hand its trial back."""
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    resources: dict[Literal["requests", "limits"], Quantities] = {
        "requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "32Gi"}}

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _dns_label(name, 20)

    @field_validator("resources")
    @classmethod
    def _gpus_are_counted_once(cls, resources: dict[str, Quantities]) -> dict[str, Quantities]:
        if any("nvidia.com/gpu" in quantities for quantities in resources.values()):
            raise ValueError("must not name nvidia.com/gpu: give the group's `gpus` instead, which sets the limit "
                             "and the worker's GPUs together")
        return resources

    @property
    def grace_seconds(self) -> int:
        return self.longest_epoch_seconds + RELEASE_MARGIN_SECONDS


class KubernetesValues(_Values):
    """Everything that differs between one cluster's sweeper and another's."""

    name: str = "sweeper"
    """Prefix of every object's name; the Service is called this, so workers reach http://<name>:8000."""
    namespace: str | None = None
    """Left out: the namespace kubectl applies to (-n)."""
    image: Image = Image()
    secrets: Secrets = Secrets()
    server: Server = Server()
    logs: Logs = Logs()
    data: Data = Data()
    workers: Annotated[list[WorkerGroup], Field(min_length=1)] = [WorkerGroup()]

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _dns_label(name, 30)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, namespace: str | None) -> str | None:
        return None if namespace is None else _dns_label(namespace, 63)

    @field_validator("workers")
    @classmethod
    def _distinct_groups(cls, groups: list[WorkerGroup]) -> list[WorkerGroup]:
        names = [group.name for group in groups]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"worker group names must differ, but {', '.join(map(repr, repeated))} repeats")
        return groups


class ValuesError(ValueError):
    """A values file that is not valid: each line names the file, the line and the field."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def load_values(path: Path) -> KubernetesValues:
    """The values in a YAML file; ValuesError naming `file:line: field: rule` for each problem."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ValuesError([f"{path}: cannot read the values file: {error.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ValuesError([f"{path}{where}: invalid YAML: {getattr(error, 'problem', None) or error}"]) from None
    try:
        return KubernetesValues.model_validate(data or {})
    except ValidationError as error:
        problems = error.errors()
        lines = yaml_lines(text, [tuple(problem["loc"]) for problem in problems])
        raise ValuesError([f"{path}{'' if line is None else f':{line}'}: "
                           f"{'.'.join(map(str, problem['loc'])) or 'values'}: "
                           f"{str(problem['msg']).removeprefix('Value error, ')}"
                           for problem, line in zip(problems, lines)]) from None


# -- the manifests ----------------------------------------------------------------------------------------------


def render_manifests(values: KubernetesValues) -> list[dict[str, Any]]:
    """Every object to apply, in the order kubectl should create them."""
    manifests: list[dict[str, Any]] = []
    if values.logs.url is None and values.logs.create:
        manifests.append(_logs_claim(values))
    manifests += [_service(values), _server(values)]
    manifests += [_worker_group(values, group) for group in values.workers]
    return manifests


def render_yaml(values: KubernetesValues) -> str:
    """The manifests as one multi-document YAML stream, for `kubectl apply -f`."""
    header = ("# Rendered by `sweeper k8s render`: edit the values and render again rather than this file.\n"
              "# Create the Secrets it reads first (docs/deploy.md, Kubernetes).\n")
    return header + yaml.dump_all(render_manifests(values), Dumper=_Dumper, sort_keys=False, explicit_start=True,
                                  width=120)


class _Dumper(yaml.SafeDumper):
    """Writes a value shared by two places (a selector's labels and the pod's) twice, not as an &alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _labels(values: KubernetesValues, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "sweeper", "app.kubernetes.io/instance": values.name,
            "app.kubernetes.io/component": component}


def _metadata(values: KubernetesValues, name: str, component: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": _labels(values, component)}
    if values.namespace is not None:
        metadata["namespace"] = values.namespace
    return metadata


def _secret_env(variable: str, secret: SecretKey) -> dict[str, Any]:
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}}


def _logdir(values: KubernetesValues) -> str:
    return values.logs.url or "/runs"


def _log_mounts(values: KubernetesValues) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volume mounts, environment) that give a pod the logdir, shared by server and workers."""
    logs = values.logs
    if logs.url is None:
        return ([{"name": "runs", "persistentVolumeClaim": {"claimName": logs.claim_name}}],
                [{"name": "runs", "mountPath": "/runs"}], [])
    if logs.credentials_secret is None:
        return [], [], []
    return ([{"name": "gcs-key", "secret": {"secretName": logs.credentials_secret}}],
            [{"name": "gcs-key", "mountPath": GCS_KEY_FOLDER, "readOnly": True}],
            [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{GCS_KEY_FOLDER}/{GCS_KEY_FILE}"}])


def _logs_claim(values: KubernetesValues) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": values.logs.size}}}
    if values.logs.storage_class is not None:
        spec["storageClassName"] = values.logs.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _metadata(values, values.logs.claim_name, "logs"), "spec": spec}


def _service(values: KubernetesValues) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": _labels(values, "server"),
                            "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http"}]}
    if values.server.replicas > 1:
        # Each server process starts its own TensorBoards for the web page: keep a browser on one of them.
        spec["sessionAffinity"] = "ClientIP"
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(values, values.name, "server"), "spec": spec}


def _probe(period: int, failures: int) -> dict[str, Any]:
    # Host: localhost is a name the server always answers to, even when allowed_hosts lists others.
    return {"httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "Host", "value": "localhost"}]},
            "periodSeconds": period, "timeoutSeconds": 3, "failureThreshold": failures}


def _server(values: KubernetesValues) -> dict[str, Any]:
    volumes, mounts, env = _log_mounts(values)
    env = [_secret_env("SWEEPER_DATABASE_URL", values.secrets.database_url),
           _secret_env("SWEEPER_ADMIN_TOKEN", values.secrets.admin_token),
           _secret_env("SWEEPER_WORKER_TOKEN", values.secrets.worker_token), *env]
    if values.server.lease_seconds is not None:
        env.append({"name": "SWEEPER_LEASE_SECONDS", "value": f"{values.server.lease_seconds:g}"})
    container = {
        "name": "server",
        "image": values.image.reference,
        "imagePullPolicy": values.image.pull_policy,
        "command": ["sweeper", "serve", "--host", "0.0.0.0", "--port", str(SERVER_PORT), "--logdir", _logdir(values)],
        "env": env,
        "ports": [{"name": "http", "containerPort": SERVER_PORT}],
        # The server migrates the database's schema as it starts: give that two minutes before liveness counts.
        "startupProbe": _probe(period=2, failures=60),
        "readinessProbe": _probe(period=5, failures=2),
        "livenessProbe": _probe(period=10, failures=6),
        "resources": values.server.resources,
    }
    pod: dict[str, Any] = {"containers": [container]}
    _add_volumes(pod, volumes, mounts)
    labels = _labels(values, "server")
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _metadata(values, f"{values.name}-server", "server"),
            "spec": {"replicas": values.server.replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": pod}}}


def _add_volumes(pod: dict[str, Any], volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> None:
    if volumes:
        pod["volumes"] = volumes
        pod["containers"][0]["volumeMounts"] = mounts


def _worker_group(values: KubernetesValues, group: WorkerGroup) -> dict[str, Any]:
    volumes, mounts, env = _log_mounts(values)
    command = ["sweeper", "worker", "--server", f"http://{values.name}:{SERVER_PORT}", "--data-root", "/data"]
    limits = dict(group.resources.get("limits", {}))
    if group.gpus:
        command += ["--gpus", "all", "--trials-per-gpu", str(group.trials_per_gpu)]
        limits["nvidia.com/gpu"] = group.gpus
    else:
        command += ["--gpus", "none", "--cpu-workers", str(group.cpu_workers)]
    if values.data.claim_name is not None:
        volumes = [*volumes, {"name": "data", "persistentVolumeClaim": {"claimName": values.data.claim_name,
                                                                       "readOnly": True}}]
        mounts = [*mounts, {"name": "data", "mountPath": "/data", "readOnly": True}]
    container = {
        "name": "worker",
        "image": values.image.reference,
        "imagePullPolicy": values.image.pull_policy,
        "command": command,
        "env": [_secret_env("SWEEPER_TOKEN", values.secrets.worker_token), *env],
        "resources": {**group.resources, "limits": limits},
    }
    pod: dict[str, Any] = {
        # SIGTERM first: each worker finishes its epoch and hands its trial back before this runs out.
        "terminationGracePeriodSeconds": group.grace_seconds,
        "containers": [container],
    }
    _add_volumes(pod, volumes, mounts)
    if group.node_selector:
        pod["nodeSelector"] = group.node_selector
    if group.tolerations and group.gpus:
        pod["tolerations"] = group.tolerations
    component = f"worker-{group.name}"
    labels = _labels(values, component)
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _metadata(values, f"{values.name}-{component}", component),
            "spec": {"replicas": group.replicas, "selector": {"matchLabels": labels},
                     # An update stops old pods before starting new ones: no GPU is needed beyond the group's.
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "25%"}},
                     "template": {"metadata": {"labels": labels}, "spec": pod}}}


# -- the command ------------------------------------------------------------------------------------------------


def render(
    values: Annotated[Path | None, typer.Option(
        "--values", "-f", help="YAML values (deploy/kubernetes/values.yaml lists them with their defaults); "
                               "left out: the defaults.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the manifests to this file instead of printing them.")] = None,
) -> None:
    """Print Kubernetes manifests for the server and the GPU workers: `| kubectl apply -f -`."""
    try:
        chosen = KubernetesValues() if values is None else load_values(values)
    except ValuesError as error:
        for line in error.lines:
            errors.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    text = render_yaml(chosen)
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text)
    except OSError as error:
        raise fail(f"{output}: cannot write the manifests: {error.strerror}", code=1) from None
    console.print(f"wrote {len(render_manifests(chosen))} manifests to {output}")
