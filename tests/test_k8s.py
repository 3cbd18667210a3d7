"""docker/k8s/: the Kubernetes manifests, checked offline.

No cluster here.  Every manifest is validated against the Kubernetes OpenAPI
schemas that the kubernetes-validate package ships (strict: unknown fields
fail), for the oldest and the newest version we claim.  The rest checks that the
pieces fit: the ConfigMap's config loads with our loader; the analyzer's exact
command, over the ConfigMap's and Secrets' files laid out as the kubelet would
mount them, reads one config with the secrets in it; each pod resolves its own
shard and MQTT identity; the commands parse with our CLI; probes, ports, GPU,
shard count and the Prometheus annotations agree with the config and with each other.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from stream import cli
from stream.config import AppConfig, parse_config
from stream.outputs import topics
from stream.outputs.publisher import NullPublisher
from stream.sharding import SHARD_COUNT_ENV, ShardingError, assignment, resolve_shard
from stream.web import health, metrics

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "docker" / "k8s"
# the oldest Kubernetes we claim (PDB unhealthyPodEvictionPolicy is GA since 1.31) and the newest schemas shipped
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
IMAGE = "deepfake-stream:latest"


# ----------------------------------------------------------------- loading


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file, document) for every resource that kustomization.yaml lists, in its order."""
    out = []
    for name in kustomization()["resources"]:
        for document in yaml.safe_load_all((K8S / name).read_text()):
            if document:
                out.append((name, document))
    return out


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for _, doc in manifests() if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def statefulset() -> dict[str, Any]:
    return the("StatefulSet")


@pytest.fixture(scope="module")
def pod(statefulset: dict[str, Any]) -> dict[str, Any]:
    return statefulset["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def analyzer(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["containers"]
    return container


@pytest.fixture(scope="module")
def config() -> AppConfig:
    return parse_config(yaml.safe_load(the("ConfigMap")["data"]["config.yaml"]), "docker/k8s/configmap.yaml")


def init_container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["initContainers"] if c["name"] == name)


def env_of(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet sets it (downward-API metadata.name resolved)."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", item
            env[item["name"]] = pod_name
    return env


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


# ----------------------------------------------------------- schema validation


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_strictly_against_the_kubernetes_schemas(version: str) -> None:
    documents = manifests()
    assert {doc["kind"] for _, doc in documents} >= {"Namespace", "ConfigMap", "Secret", "StatefulSet", "Service", "PodDisruptionBudget"}
    for name, document in documents:
        try:
            checked = kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {document['kind']}/{document['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:  # a typo in apiVersion or kind: never only a warning
            pytest.fail(f"{name}: {exc.message}")
        assert checked == version.rsplit(".", 1)[0]  # the pinned schemas themselves, not a fallback


def test_the_validation_has_teeth(statefulset: dict[str, Any]) -> None:
    """A misspelt field and an env value that is not a string are what strict validation must catch."""
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    broken = [
        {**container, "livenesProbe": container["livenessProbe"]},
        {**container, "env": [{"name": SHARD_COUNT_ENV, "value": 4}]},
    ]
    for bad in broken:
        spec = {**statefulset["spec"], "template": {**statefulset["spec"]["template"], "spec": {**statefulset["spec"]["template"]["spec"], "containers": [bad]}}}
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate({**statefulset, "spec": spec}, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_in_its_namespace() -> None:
    listed = kustomization()["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert the("Namespace")["metadata"]["name"] == kustomization()["namespace"]
    assert all("namespace" not in doc["metadata"] for _, doc in manifests())  # kustomize sets it, one place to change


# ------------------------------------------------------------------- config


def test_configmap_config_loads_with_our_loader_and_fits_the_pod(config: AppConfig, pod: dict[str, Any], analyzer: dict[str, Any]) -> None:
    assert config.http.enabled and config.http.host == "0.0.0.0"
    assert config.mqtt.enabled and config.mqtt.host == "mosquitto"
    assert len(config.streams) >= 4 and str(config.detector.device) == "cuda"
    # secrets are not in the ConfigMap
    assert config.mqtt.password is None and not config.whip.tokens
    # the weights directory is the weights volume's mount, in the analyzer and in the download job
    weights_mounts = {c["name"]: m["mountPath"] for c in [*pod["initContainers"], analyzer] for m in c["volumeMounts"] if m["name"] == "weights"}
    assert set(weights_mounts.values()) == {str(config.detector.weights_dir)} and set(weights_mounts) == {"weights", "analyzer"}
    # compiled kernels go to the default compile cache under the image's HOME (/home/app), a volume of the pod
    assert config.detector.compile_classifier
    cache_mounts = [m["mountPath"] for m in analyzer["volumeMounts"] if m["name"] == "compile-cache"]
    assert cache_mounts == ["/home/app/.cache/deepfake-stream/compile"]


def materialize_volumes(pod: dict[str, Any], root: Path) -> dict[str, Path]:
    """Each volume of the pod as a directory under ``root``, filled like the kubelet does for ConfigMaps and Secrets."""
    by_name = {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] in ("ConfigMap", "Secret")}
    dirs = {}
    for volume in pod["volumes"]:
        directory = root / volume["name"]
        directory.mkdir()
        sources = []
        if "configMap" in volume:
            sources.append(by_name[volume["configMap"]["name"]]["data"])
        for source in volume.get("projected", {}).get("sources", []):
            sources.append(by_name[source["secret"]["name"]]["stringData"])
        for data in sources:
            for key, text in data.items():
                assert not (directory / key).exists(), f"{volume['name']}: two sources write {key}"
                (directory / key).write_text(text)
        dirs[volume["name"]] = directory
    return dirs


def host_path(container: dict[str, Any], path: str, volumes: dict[str, Path]) -> Path:
    """Where a container path lands among the materialized volumes (the longest mount prefix wins)."""
    best = max((m for m in container["volumeMounts"] if PurePosixPath(path).is_relative_to(m["mountPath"])), key=lambda m: len(m["mountPath"]))
    return volumes[best["name"]] / PurePosixPath(path).relative_to(best["mountPath"])


def test_analyzer_reads_the_configmap_and_the_secrets_as_one_config(pod: dict[str, Any], analyzer: dict[str, Any], config: AppConfig, tmp_path: Path) -> None:
    """No init container, no merged file: ``run --config base --config secret...`` over the mounted volumes."""
    volumes = materialize_volumes(pod, tmp_path)
    assert [c["name"] for c in pod["initContainers"]] == ["weights"]
    args = cli.build_parser().parse_args(analyzer["command"][1:])
    assert args.func is cli.cmd_run and len(args.config) == 3
    merged = cli.load_app_config([host_path(analyzer, str(path), volumes) for path in args.config])
    secrets = {doc["metadata"]["name"]: yaml.safe_load(next(iter(doc["stringData"].values()))) for _, doc in manifests() if doc["kind"] == "Secret"}
    mqtt_secret = secrets["deepfake-stream-mqtt"]["mqtt"]
    assert merged.mqtt.username == mqtt_secret["username"]
    assert merged.mqtt.password is not None and merged.mqtt.password.get_secret_value() == mqtt_secret["password"]
    assert {k: v.get_secret_value() for k, v in merged.whip.tokens.items()} == secrets["deepfake-stream-whip"]["whip"]["tokens"]
    # everything else is the ConfigMap's
    assert merged.streams == config.streams and merged.http == config.http and merged.detector == config.detector
    assert merged.mqtt.model_dump(exclude={"username", "password"}) == config.mqtt.model_dump(exclude={"username", "password"})
    # the secrets are mounted read-only, readable by the app's group only; no copy of them is written anywhere
    secret_volume = next(v for v in pod["volumes"] if v["name"] == "config-secrets")
    assert secret_volume["projected"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert all(m["readOnly"] for m in analyzer["volumeMounts"] if m["name"].startswith("config"))
    assert not [v for v in pod["volumes"] if "emptyDir" in v]


def test_a_bad_secret_fails_the_pod_in_one_line_naming_its_file(pod: dict[str, Any], analyzer: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    volumes = materialize_volumes(pod, tmp_path)
    (volumes["config-secrets"] / "mqtt.yaml").write_text("mqtt:\n  pasword: typo\n")
    command = [str(host_path(analyzer, arg, volumes)) if arg.startswith("/") else arg for arg in analyzer["command"][1:]]
    assert cli.main(command) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("mqtt.yaml: mqtt.pasword: Extra inputs are not permitted"), err


# ------------------------------------------------------------------ workload


def test_analyzer_command_image_gpu_and_env(statefulset: dict[str, Any], pod: dict[str, Any], analyzer: dict[str, Any]) -> None:
    args = cli.build_parser().parse_args(analyzer["command"][1:])
    assert analyzer["command"][0] == "deepfake-stream" and args.func is cli.cmd_run
    assert [str(p) for p in args.config] == ["/config/base/config.yaml", "/config/secrets/mqtt.yaml", "/config/secrets/whip.yaml"]
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    assert {c["image"] for c in [*pod["initContainers"], analyzer]} == {IMAGE, compose["services"]["analyzer"]["image"]}
    assert all(c["imagePullPolicy"] == "IfNotPresent" for c in [*pod["initContainers"], analyzer])  # a locally built :latest
    assert analyzer["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert all("nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}) for c in pod["initContainers"])
    env = env_of(analyzer, "deepfake-stream-0")
    assert set(env["NVIDIA_DRIVER_CAPABILITIES"].split(",")) == {"compute", "utility", "video"}
    assert env[SHARD_COUNT_ENV] == str(statefulset["spec"]["replicas"])


def test_every_replica_resolves_its_own_shard_and_together_they_cover_every_stream(statefulset: dict[str, Any], analyzer: dict[str, Any], config: AppConfig) -> None:
    replicas = statefulset["spec"]["replicas"]
    name = statefulset["metadata"]["name"]
    specs = [resolve_shard(environ=env_of(analyzer, f"{name}-{ordinal}")) for ordinal in range(replicas)]
    assert [(s.index, s.count, s.source) for s in specs] == [(i, replicas, "pod-ordinal") for i in range(replicas)]
    names = [s.name for s in config.streams]
    assert sorted(n for s in specs for n in s.select(names)) == sorted(names)
    assert sum(1 for owned in assignment(names, replicas).values() if owned) >= 2  # the example really spreads out
    # a pod beyond the replica count (scaled up without the env) refuses to start instead of double-watching
    with pytest.raises(ShardingError, match="replica count"):
        resolve_shard(environ=env_of(analyzer, f"{name}-{replicas}"))


def test_every_pod_has_its_own_mqtt_identity_and_an_idle_pod_is_ready(statefulset: dict[str, Any], analyzer: dict[str, Any], config: AppConfig) -> None:
    """Pods share one broker: their client ids and availability topics differ, derived by the service from POD_NAME."""
    name = statefulset["metadata"]["name"]
    plans = [config.shard_plan(env_of(analyzer, f"{name}-{ordinal}")) for ordinal in range(statefulset["spec"]["replicas"])]
    assert all(plan.named and plan.instance == f"{name}-{plan.spec.index}" for plan in plans)
    client_ids = {topics.client_id(config.mqtt.client_id, plan.instance) for plan in plans}
    assert client_ids == {f"deepfake-stream-{name}-{i}" for i in range(len(plans))}
    assert len({topics.availability_topic(config.mqtt.topic_prefix, plan.instance) for plan in plans}) == len(plans)
    # more pods than cameras: a pod whose shard owns none passes its readiness probe (/health) instead of stalling the roll
    count = len(config.streams) + 3
    idle = next(plan for plan in (config.shard_plan({**env_of(analyzer, f"{name}-{i}"), SHARD_COUNT_ENV: str(count)}) for i in range(count)) if plan.empty)
    registry = SimpleNamespace(started_at=0.0, handles=list, is_configured=lambda _: True)
    connected = SimpleNamespace(enabled=True, connected=True, pending_alerts=0, alerts_dropped=0)
    body = health.health_report(registry, connected, "mosquitto:1883", shard=idle)  # type: ignore[arg-type]
    assert body["ok"] is True and body["problems"] == [] and "nothing to watch" in body["note"]


def test_weights_init_container_is_the_compose_weights_job(pod: dict[str, Any], statefulset: dict[str, Any]) -> None:
    init = init_container(pod, "weights")
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    assert init["command"] == ["deepfake-stream", *compose["services"]["weights"]["command"]]
    args = cli.build_parser().parse_args(init["command"][1:])
    assert args.func is cli.cmd_weights_download and args.no_progress
    assert [m["mountPath"] for m in init["volumeMounts"]] == [str(args.dir)]
    claims = {c["metadata"]["name"]: c for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert set(claims) == {"weights", "compile-cache"}  # the checkpoints and the compiled kernels, kept across pods
    assert all(c["spec"]["accessModes"] == ["ReadWriteOnce"] for c in claims.values())
    # the pod runs as the image's user, and fsGroup lets it write the claim
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 10001


def test_every_mounted_volume_is_declared(pod: dict[str, Any], statefulset: dict[str, Any]) -> None:
    declared = {v["name"] for v in pod["volumes"]} | {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    for container in [*pod["initContainers"], *pod["containers"]]:
        for mount in container["volumeMounts"]:
            assert mount["name"] in declared, f"{container['name']}: volume {mount['name']} not declared"


def registered_routes() -> set[str]:
    """The paths stream/web/health.py and metrics.py serve, from their own add_routes."""
    app = web.Application()
    registry = SimpleNamespace(started_at=0.0, handles=list)
    health.add_routes(app, registry, NullPublisher(), broker="mqtt:1883")  # type: ignore[arg-type]
    metrics.add_routes(app, metrics.ServiceMetrics(registry, SimpleNamespace(), NullPublisher()))  # type: ignore[arg-type]
    return {resource.canonical for resource in app.router.resources()}


def test_probes_hit_the_health_routes_on_the_configured_port(analyzer: dict[str, Any], config: AppConfig) -> None:
    routes = registered_routes()
    probes = {kind: analyzer[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/health/live"
    assert probes["readinessProbe"]["path"] == "/health"
    for probe in probes.values():
        assert probe["path"] in routes
        assert container_port(analyzer, probe["port"]) == config.http.port
    # the startup probe gives model loading minutes before liveness may restart the pod
    startup = analyzer["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_services_select_the_pods_and_prometheus_scrapes_the_metrics_port(statefulset: dict[str, Any], analyzer: dict[str, Any], config: AppConfig) -> None:
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == "Service"}
    headless = services[statefulset["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["publishNotReadyAddresses"] is True  # metrics of pods whose cameras are down
    (metrics,) = [s for s in services.values() if s["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true"]
    annotations = metrics["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in registered_routes()
    port = next(p for p in metrics["spec"]["ports"] if str(p["port"]) == annotations["prometheus.io/port"])
    assert container_port(analyzer, port["targetPort"]) == config.http.port


def test_pod_disruption_budget_allows_one_pod_down_at_a_time(statefulset: dict[str, Any]) -> None:
    pdb = the("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == statefulset["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_schemas_ship_with_the_package() -> None:
    """Validation reads the package's own files: no download, no cluster (checked with the network unshared too)."""
    shipped = set(kubernetes_validate.utils.all_versions())
    assert set(KUBERNETES_VERSIONS) <= shipped
