"""`sweeper k8s render`: the manifests, validated against Kubernetes's own schemas (strict: an unknown or
misspelt field fails), and checked for what a deployment depends on: Secrets referenced and never
written in, probes on the server's /healthz, GPU limits, a grace period that outlasts an epoch, and the
image docker-compose.yml builds. No cluster runs here; kubernetes-validate holds the schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from sweeper_commands import envvars_of, parse_sweeper_command
from typer.testing import CliRunner

from api.auth import PUBLIC_ROUTES
from api.routers.health import router as health_router
from cli import (RELEASE_MARGIN_SECONDS, KubernetesValues, ValuesError, app, load_values, render_manifests,
                 render_yaml)

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "deploy" / "kubernetes" / "values.yaml"
RENDERED = ROOT / "deploy" / "kubernetes" / "sweeper.yaml"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
KUBERNETES_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
"""The oldest release still common in managed clusters, and the newest the schemas know."""

OBJECT_STORE = KubernetesValues.model_validate({
    "name": "tune", "namespace": "ml",
    "server": {"replicas": 2, "lease_seconds": 120},
    "logs": {"url": "gs://lab-bucket/sweeper/runs", "credentials_secret": "sweeper-gcs"},
    "data": {"claim_name": "datasets"},
    "workers": [{"name": "a100", "replicas": 8, "gpus": 4, "trials_per_gpu": 2, "longest_epoch_seconds": 1800,
                 "node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}},
                {"name": "cpu", "replicas": 3, "gpus": 0, "cpu_workers": 4}],
})
"""Everything that a values file can switch on, at once."""
VARIANTS = {"defaults": KubernetesValues(), "object store, two servers, two groups": OBJECT_STORE}


def _containers(manifests: list[dict[str, Any]], component_prefix: str) -> list[dict[str, Any]]:
    return [container for manifest in manifests if manifest["kind"] == "Deployment"
            and manifest["metadata"]["labels"]["app.kubernetes.io/component"].startswith(component_prefix)
            for container in manifest["spec"]["template"]["spec"]["containers"]]


def _deployments(manifests: list[dict[str, Any]], component_prefix: str) -> list[dict[str, Any]]:
    return [manifest for manifest in manifests if manifest["kind"] == "Deployment"
            and manifest["metadata"]["labels"]["app.kubernetes.io/component"].startswith(component_prefix)]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_passes_the_strict_kubernetes_schema(variant: str, version: str) -> None:
    for manifest in render_manifests(VARIANTS[variant]):
        kubernetes_validate.validate(manifest, version, strict=True)


def test_the_strict_schema_catches_a_misspelt_field() -> None:
    # The check above can fail: a field Kubernetes does not know is refused, not ignored.
    deployment = _deployments(render_manifests(KubernetesValues()), "worker")[0]
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 60

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_committed_manifests_are_the_committed_values_rendered() -> None:
    assert RENDERED.read_text() == render_yaml(load_values(VALUES)), \
        "run: sweeper k8s render --values deploy/kubernetes/values.yaml -o deploy/kubernetes/sweeper.yaml"


def test_the_values_file_lists_every_default() -> None:
    assert load_values(VALUES) == KubernetesValues()
    written = yaml.safe_load(VALUES.read_text())
    assert set(written) == set(KubernetesValues.model_fields)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_database_url_and_tokens_come_from_secrets_and_workers_get_only_the_worker_token(variant: str) -> None:
    values = VARIANTS[variant]
    manifests = render_manifests(values)
    assert not [manifest for manifest in manifests if manifest["kind"] == "Secret"], "a Secret's value is inlined"
    (server,) = _containers(manifests, "server")
    server_env = {entry["name"]: entry for entry in server["env"]}
    secrets = values.secrets
    for variable, secret in (("SWEEPER_DATABASE_URL", secrets.database_url), ("SWEEPER_ADMIN_TOKEN", secrets.admin_token),
                             ("SWEEPER_WORKER_TOKEN", secrets.worker_token)):
        assert server_env[variable] == {"name": variable, "valueFrom": {"secretKeyRef": secret.model_dump()}}
    for worker in _containers(manifests, "worker"):
        worker_env = {entry["name"]: entry for entry in worker["env"]}
        assert worker_env["SWEEPER_TOKEN"]["valueFrom"] == {"secretKeyRef": secrets.worker_token.model_dump()}
        assert not {"SWEEPER_ADMIN_TOKEN", "SWEEPER_DATABASE_URL", "SWEEPER_WORKER_TOKEN"} & set(worker_env)
    for container in _containers(manifests, ""):
        for entry in container["env"]:
            assert "TOKEN" not in entry["name"] and "DATABASE" not in entry["name"] or "value" not in entry


def test_the_server_is_probed_on_its_public_healthz_at_the_port_it_serves() -> None:
    manifests = render_manifests(KubernetesValues())
    (server,) = _containers(manifests, "server")
    health_paths = {route.path for route in health_router.routes}
    public_paths = {route.path for route in PUBLIC_ROUTES}
    (port,) = server["ports"]
    serve = parse_sweeper_command(server["command"])
    assert serve.params["host"] == "0.0.0.0" and serve.params["port"] == port["containerPort"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = server[kind]["httpGet"]
        assert probe["path"] in health_paths & public_paths, kind
        assert probe["port"] == port["name"], kind
    (service,) = [manifest for manifest in manifests if manifest["kind"] == "Service"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    (deployment,) = _deployments(manifests, "server")
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]


def test_workers_reach_the_server_through_its_service() -> None:
    for values in VARIANTS.values():
        manifests = render_manifests(values)
        (service,) = [manifest for manifest in manifests if manifest["kind"] == "Service"]
        for worker in _containers(manifests, "worker"):
            server_url = parse_sweeper_command(worker["command"]).params["server"]
            assert server_url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


def test_each_gpu_worker_pod_is_limited_to_its_gpus_and_runs_a_worker_on_each() -> None:
    manifests = render_manifests(OBJECT_STORE)
    a100, cpu = _deployments(manifests, "worker")
    (container,) = a100["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    command = parse_sweeper_command(container["command"]).params
    # The device plugin shows the pod its own four GPUs only: "all" means those.
    assert command["gpus"] == "all" and command["trials_per_gpu"] == 2
    assert a100["spec"]["replicas"] == 8
    assert a100["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert a100["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    (cpu_container,) = cpu["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in cpu_container["resources"]["limits"]
    assert parse_sweeper_command(cpu_container["command"]).params["gpus"] == "none"
    assert parse_sweeper_command(cpu_container["command"]).params["cpu_workers"] == 4


def test_a_stopped_worker_pod_has_time_to_finish_its_longest_epoch_and_hand_its_trial_back() -> None:
    for values in VARIANTS.values():
        for group, deployment in zip(values.workers, _deployments(render_manifests(values), "worker"), strict=True):
            grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            assert grace >= group.longest_epoch_seconds + RELEASE_MARGIN_SECONDS
    # And an update never needs a GPU beyond the group's: old pods stop before new ones start.
    strategy = _deployments(render_manifests(KubernetesValues()), "worker")[0]["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxSurge"] == 0


def test_every_pod_runs_the_image_docker_compose_builds() -> None:
    images = {service["image"] for service in COMPOSE["services"].values() if service.get("build")}
    assert len(images) == 1
    for container in _containers(render_manifests(KubernetesValues()), ""):
        assert {container["image"]} == images


def test_every_command_and_environment_variable_is_one_the_cli_reads() -> None:
    for values in VARIANTS.values():
        for container in _containers(render_manifests(values), ""):
            parse_sweeper_command(container["command"])
            read = envvars_of(container["command"])
            for entry in container["env"]:
                if entry["name"].startswith("SWEEPER_"):
                    assert entry["name"] in read, f"{container['name']} sets {entry['name']}, which it never reads"


def test_the_server_and_every_worker_share_one_read_write_many_log_volume() -> None:
    manifests = render_manifests(KubernetesValues())
    (claim,) = [manifest for manifest in manifests if manifest["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (server,) = _containers(manifests, "server")
    assert parse_sweeper_command(server["command"]).params["logdir"] == "/runs"
    for deployment in _deployments(manifests, ""):
        pod = deployment["spec"]["template"]["spec"]
        (volume,) = [volume for volume in pod["volumes"] if volume["name"] == "runs"]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert {"name": "runs", "mountPath": "/runs"} in pod["containers"][0]["volumeMounts"]


def test_an_object_store_logdir_mounts_no_volume_and_gives_every_pod_the_bucket_key() -> None:
    manifests = render_manifests(OBJECT_STORE)
    assert not [manifest for manifest in manifests if manifest["kind"] == "PersistentVolumeClaim"]
    (server,) = _containers(manifests, "server")
    assert parse_sweeper_command(server["command"]).params["logdir"] == "gs://lab-bucket/sweeper/runs"
    for deployment in _deployments(manifests, ""):
        pod = deployment["spec"]["template"]["spec"]
        assert "runs" not in {volume["name"] for volume in pod["volumes"]}
        (key,) = [volume for volume in pod["volumes"] if volume["name"] == "gcs-key"]
        assert key["secret"]["secretName"] == "sweeper-gcs"
        env = {entry["name"]: entry.get("value") for entry in pod["containers"][0]["env"]}
        assert env["GOOGLE_APPLICATION_CREDENTIALS"].startswith(pod["containers"][0]["volumeMounts"][0]["mountPath"])
    assert all(manifest["metadata"]["namespace"] == "ml" for manifest in manifests)


def test_render_prints_the_manifests_that_kubectl_applies(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("name: lab\nworkers:\n  - {name: v100, replicas: 5, gpus: 2}\n")

    result = CliRunner().invoke(app, ["k8s", "render", "--values", str(values)])

    assert result.exit_code == 0, result.output
    assert list(yaml.safe_load_all(result.output)) == render_manifests(load_values(values))
    (workers,) = _deployments(render_manifests(load_values(values)), "worker")
    assert workers["metadata"]["name"] == "lab-worker-v100" and workers["spec"]["replicas"] == 5


def test_a_values_file_with_mistakes_names_the_file_line_and_field_of_each(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("name: sweeper\n"
                      "workers:\n"
                      "  - name: gpu\n"
                      "    gpus: -1\n"
                      "  - name: gpu\n"
                      "logs: {credentials_secret: gcs}\n"
                      "replica: 2\n")

    result = CliRunner().invoke(app, ["k8s", "render", "--values", str(values)], env={"COLUMNS": "300"})

    assert result.exit_code == 2
    assert f"{values}:4: workers.0.gpus: Input should be greater than or equal to 0" in result.output
    assert f"{values}:6: logs: credentials_secret is for an object store" in result.output
    assert f"{values}:7: replica: Extra inputs are not permitted" in result.output


def test_two_worker_groups_of_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="worker group names must differ, but 'gpu' repeats"):
        KubernetesValues.model_validate({"workers": [{"name": "gpu"}, {"name": "gpu", "gpus": 2}]})


def test_an_unreadable_values_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValuesError, match="missing.yaml: cannot read the values file"):
        load_values(tmp_path / "missing.yaml")


def test_the_values_example_in_the_deployment_guide_renders_valid_manifests(tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    (example,) = [block.split("\n", 1)[1] for block in guide.split("```yaml\n")[1:]
                  if block.startswith("# my-values.yaml")]
    values = tmp_path / "my-values.yaml"
    values.write_text(example.split("```")[0])

    manifests = render_manifests(load_values(values))

    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSIONS[-1], strict=True)
    assert [deployment["metadata"]["name"] for deployment in _deployments(manifests, "worker")] == \
        ["sweeper-worker-a100", "sweeper-worker-t4"]
