"""The agent Helm charts: lint, render with several value sets, validate the manifests
against Kubernetes' strict schemas and yamllint, and check the promises the charts make
(probes, security, secrets, scaling, the Propeller routing they print)."""

import json
import pathlib
import subprocess
import sys
import tarfile

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import AGENT_CHARTS, CHARTS, ROOT, UMBRELLA, split_notes

KUBE_VERSIONS = ["1.32.0", "1.37.0"]
SHARED_VALUES = sorted((ROOT / "tests/charts/values").glob("*.yaml"))
YAMLLINT_CONFIG = json.dumps(
    {
        "extends": "default",
        "rules": {
            "line-length": {"max": 160},
            "document-start": "disable",
            "comments": {"min-spaces-from-content": 1},
            "indentation": {"indent-sequences": "whatever"},
            "truthy": {"check-keys": False},
        },
    }
)


def value_sets(chart):
    """(name, values) pairs: the defaults, the shared scenarios, the chart's own ci/ files."""
    sets = [("default", {})]
    for path in SHARED_VALUES + sorted((CHARTS / chart / "ci").glob("*.yaml")):
        sets.append((path.stem, yaml.safe_load(path.read_text()) or {}))
    return sets


CASES = [(chart, name, values) for chart in AGENT_CHARTS for name, values in value_sets(chart)]
CASE_IDS = [f"{chart}-{name}" for chart, name, _ in CASES]


def render(chart, values, name=None, namespace="flyte"):
    with helm.Chart.load(CHARTS / chart) as c:
        return c.render(values, name=name or chart, namespace=namespace)


def manifests(rendered):
    docs = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs):
    out = {}
    for d in docs:
        assert d["kind"] not in out, f"two {d['kind']} objects"
        out[d["kind"]] = d
    return out


def chart_meta(chart):
    return yaml.safe_load((CHARTS / chart / "Chart.yaml").read_text())


def task_types(chart, kind):
    raw = chart_meta(chart)["annotations"][f"agents.flyte.org/{kind}-task-types"]
    return [t.strip() for t in raw.split(",") if t.strip()]


@pytest.mark.parametrize("chart", AGENT_CHARTS)
def test_lint_is_clean(chart):
    report = helm.lint(CHARTS / chart, strict=True)
    assert report["errors"] == []
    # Severity 1 is informational (e.g. "icon is recommended"); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(("chart", "name", "values"), CASES, ids=CASE_IDS)
def test_manifests_pass_strict_schema_and_yamllint(chart, name, values, tmp_path):
    rendered = render(chart, values)
    docs = manifests(rendered)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap"} <= kinds
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            # A CRD: no schema ships with Kubernetes; its fields are checked below.
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    out = tmp_path / "rendered.yaml"
    out.write_text("".join(t for p, t in rendered.items() if not p.endswith("NOTES.txt")))
    lint = subprocess.run(
        [sys.executable, "-m", "yamllint", "-s", "-d", YAMLLINT_CONFIG, str(out)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout


@pytest.mark.parametrize(("chart", "name", "values"), CASES, ids=CASE_IDS)
def test_deployment_keeps_its_promises(chart, name, values):
    objs = by_kind(manifests(render(chart, values)))
    merged = {**yaml.safe_load((CHARTS / chart / "values.yaml").read_text())}
    for key, value in values.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    port = merged["service"]["port"]
    deploy = objs["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # Service-link variables (AGENT_SNOWFLAKE_PORT, ...) would be unknown AGENT_* settings.
    assert pod["enableServiceLinks"] is False

    # Probes: gRPC health on the gRPC port, which is what the agent serves there; with TLS
    # a TCP check (the kubelet's gRPC probe cannot speak TLS) and the certificate mounted.
    tls = merged["tls"]
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe.get("tcpSocket" if tls["enabled"] else "grpc") == ({"port": "grpc"} if tls["enabled"] else {"port": port})
    assert f"--port={port}" in container["args"]
    tls_args = [a for a in container["args"] if a.startswith("--tls-")]
    if tls["enabled"]:
        expected = ["--tls-cert=/etc/flyte-agent/tls/tls.crt", "--tls-key=/etc/flyte-agent/tls/tls.key"]
        expected += ["--tls-client-ca=/etc/flyte-agent/tls/ca.crt"] if tls["mutual"] else []
        assert tls_args == expected
        tls_volume = next(v for v in pod["volumes"] if v["name"] == "tls")
        assert tls_volume["secret"]["secretName"] == tls["secretName"]
    else:
        assert tls_args == [] and all(v["name"] != "tls" for v in pod["volumes"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == port

    # Hardened pod: non-root, read-only root, no privilege escalation, no capabilities.
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False

    # Configuration from the ConfigMap, through AGENT_CONFIG.
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert env["AGENT_CONFIG"] == mounts["config"]["mountPath"] + "/config.yaml"
    config = yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])
    assert config["log_format"] == "json"
    assert "checksum/config" in deploy["spec"]["template"]["metadata"]["annotations"]

    # Secrets in Flyte's layout at the secrets path, from an existing or a chart-made Secret.
    secrets = merged["secrets"]
    assert env["FLYTE_SECRETS_DEFAULT_DIR"] == secrets["mountPath"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    if secrets["existingSecret"] or secrets["data"]:
        assert mounts["secrets"]["mountPath"] == secrets["mountPath"]
        assert mounts["secrets"]["readOnly"] is True
        expected = secrets["existingSecret"] or objs["Secret"]["metadata"]["name"]
        assert volumes["secrets"]["secret"]["secretName"] == expected
    else:
        assert "secrets" not in mounts
    if secrets["data"] and not secrets["existingSecret"]:
        assert objs["Secret"]["stringData"] == {k.lower(): v for k, v in secrets["data"].items()}
    else:
        assert "Secret" not in objs

    # Service: gRPC over cleartext HTTP/2 to the named container port.
    svc_ports = {p["name"]: p for p in objs["Service"]["spec"]["ports"]}
    assert svc_ports["grpc"]["appProtocol"] == ("https" if tls["enabled"] else "kubernetes.io/h2c")
    assert svc_ports["grpc"]["port"] == port and svc_ports["grpc"]["targetPort"] == "grpc"
    assert objs["Service"]["metadata"]["name"] == deploy["metadata"]["name"]

    # Metrics: port, scrape annotations, optional ServiceMonitor.
    metrics = merged["metrics"]
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    if metrics["enabled"]:
        assert ports["metrics"] == metrics["port"]
        assert annotations["prometheus.io/port"] == str(metrics["port"])
        assert f"--metrics-port={metrics['port']}" in container["args"]
    else:
        assert "metrics" not in ports and "metrics" not in svc_ports
        assert "prometheus.io/scrape" not in annotations
        assert "--metrics-port=0" in container["args"]
    if metrics["enabled"] and metrics["serviceMonitor"]["enabled"]:
        sm = objs["ServiceMonitor"]
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["spec"]["endpoints"][0]["port"] == "metrics"
        assert sm["spec"]["selector"]["matchLabels"].items() <= objs["Service"]["metadata"]["labels"].items()
    else:
        assert "ServiceMonitor" not in objs

    # Scaling: the HPA owns the replica count when enabled.
    if merged["autoscaling"]["enabled"]:
        hpa = objs["HorizontalPodAutoscaler"]
        assert "replicas" not in deploy["spec"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] == merged["autoscaling"]["minReplicas"]
    else:
        assert deploy["spec"]["replicas"] == merged["replicaCount"]
        assert "HorizontalPodAutoscaler" not in objs
    assert ("PodDisruptionBudget" in objs) == merged["podDisruptionBudget"]["enabled"]
    assert ("ServiceAccount" in objs) == merged["serviceAccount"]["create"]
    if merged["serviceAccount"]["create"]:
        sa = objs["ServiceAccount"]
        assert pod["serviceAccountName"] == sa["metadata"]["name"]
        assert sa["metadata"].get("annotations", {}) == merged["serviceAccount"]["annotations"]
    if merged["topologySpread"]["enabled"]:
        keys = [c["topologyKey"] for c in pod["topologySpreadConstraints"]]
        assert keys == merged["topologySpread"]["topologyKeys"]
    else:
        assert "topologySpreadConstraints" not in pod

    # Image: digest wins over tag, tag defaults to the chart's appVersion.
    image = merged["image"]
    if image["digest"]:
        assert container["image"] == f"{image['repository']}@{image['digest']}"
    else:
        assert container["image"] == f"{image['repository']}:{image['tag'] or chart_meta(chart)['appVersion']}"


@pytest.mark.parametrize("chart", AGENT_CHARTS)
def test_full_values_reach_the_pod(chart):
    values = yaml.safe_load((ROOT / "tests/charts/values/full.yaml").read_text())
    objs = by_kind(manifests(render(chart, values)))
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RUST_BACKTRACE"] == "1"
    assert "--grace-period=20s" in container["args"]
    assert container["envFrom"] == values["envFrom"]
    token = next(v for v in pod["volumes"] if v["name"] == "service-account-token")
    source = token["projected"]["sources"][0]["serviceAccountToken"]
    assert source["audience"] == values["serviceAccountToken"]["audience"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "service-account-token")
    assert env["FLYTE_DATABRICKS_OIDC_TOKEN_FILE"] == mount["mountPath"] + "/token"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["tolerations"] == values["tolerations"]
    assert objs["PodDisruptionBudget"]["spec"] == {
        "minAvailable": 2,
        "selector": objs["Deployment"]["spec"]["selector"],
    }
    assert yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])["log_level"] == "debug"
    assert objs["Deployment"]["spec"]["template"]["metadata"]["labels"]["team"] == "data-platform"


def test_tls_without_a_secret_name_is_refused_with_the_reason():
    with pytest.raises(helm.HelmRenderError, match="tls.secretName"):
        render(AGENT_CHARTS[0], {"tls": {"enabled": True}})


def test_notes_with_tls_tell_propeller_to_verify():
    chart = AGENT_CHARTS[0]
    notes, connector, agent = notes_blocks(chart, values={"tls": {"enabled": True, "secretName": "t"}})
    assert connector["plugins"]["connector-service"]["connectors"][chart]["insecure"] is False
    assert agent["plugins"]["agent-service"]["agents"][chart]["insecure"] is False
    assert f"{chart}.flyte" in notes and "system" in notes


@pytest.mark.parametrize("chart", AGENT_CHARTS)
def test_notes_tell_flyte2_backends_where_to_connect(chart):
    notes, connector, _ = notes_blocks(chart)
    assert "flyteidl2.connector" in notes and "ListConnectors" in notes
    assert connector["plugins"]["connector-service"]["connectors"][chart]["endpoint"] == f"k8s://{chart}.flyte:8000"


@pytest.mark.parametrize(
    "bad",
    [
        {"replicaCount": "three"},
        {"image": {"pullPolicy": "Sometimes"}},
        {"image": {"digest": "latest"}},
        {"service": {"port": 70000}},
        {"secrets": {"mountPath": "relative/path"}},
        {"propeller": {"timeouts": {"GetTask": "ten seconds"}}},
        {"autoscaling": {"maxReplicas": 0}},
        {"replicasCount": 2},
    ],
    ids=lambda v: json.dumps(v),
)
def test_schema_rejects_bad_values(bad):
    with pytest.raises(helm.HelmValuesError):
        render(AGENT_CHARTS[0], bad)


@pytest.mark.parametrize("chart", AGENT_CHARTS + [UMBRELLA])
def test_values_and_chart_files_are_clean(chart):
    d = CHARTS / chart
    check = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(d / "values.schema.json"), str(d / "values.yaml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    lint = subprocess.run(
        [sys.executable, "-m", "yamllint", "-s", "-d", YAMLLINT_CONFIG, str(d / "values.yaml"), str(d / "Chart.yaml")],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout


CONNECTOR_BLOCK = "Flyte 1.16 and later, connector-service: Propeller configuration"
AGENT_BLOCK = "Flyte 1.15 and earlier, agent-service: Propeller configuration"


def notes_blocks(chart, name=None, namespace="flyte", values=None):
    """The NOTES and their Propeller configuration blocks for both Flyte 1 plugins, parsed
    (test_propeller.py checks every block)."""
    notes = render(chart, values or {}, name=name, namespace=namespace)[f"{chart}/templates/NOTES.txt"]
    _, blocks = split_notes(notes)
    return notes, blocks[CONNECTOR_BLOCK], blocks[AGENT_BLOCK]


@pytest.mark.parametrize("chart", AGENT_CHARTS)
@pytest.mark.parametrize(("release", "namespace", "service"), [(None, "flyte", None), ("prod", "agents", "prod-{chart}")])
def test_notes_route_the_task_types(chart, release, namespace, service):
    service = (service or "{chart}").format(chart=chart)
    asynchronous, synchronous = task_types(chart, "async"), task_types(chart, "sync")
    assert asynchronous or synchronous
    notes, connector, agent = notes_blocks(chart, name=release, namespace=namespace)
    endpoint = f"k8s://{service}.{namespace}:8000"
    for block, plugin, deployments, routes, list_rpc in [
        (connector, "connector-service", "connectors", "connectorForTaskTypes", "ListConnectors"),
        (agent, "agent-service", "agents", "agentForTaskTypes", "ListAgents"),
    ]:
        assert plugin in block["tasks"]["task-plugins"]["enabled-plugins"]
        cfg = block["plugins"][plugin]
        deployment = cfg[deployments][service]
        assert deployment["endpoint"] == endpoint
        assert deployment["insecure"] is True
        assert list_rpc in deployment["timeouts"]
        assert ("ExecuteTaskSync" in deployment["timeouts"]) == bool(synchronous)
        # Static routes force async in Propeller, so sync task types are left to discovery.
        assert cfg.get(routes, {}) == {t: service for t in asynchronous}
    for t in asynchronous + synchronous:
        assert t in notes


@pytest.mark.parametrize("chart", AGENT_CHARTS)
def test_packaged_chart_is_self_contained(chart, tmp_path):
    archive = pathlib.Path(helm.package(CHARTS / chart, destination=tmp_path, version="9.9.9", app_version="9.9.9"))
    assert archive.name == f"{chart}-9.9.9.tgz"
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        schema = members[f"{chart}/values.schema.json"]
        assert schema.isfile(), "the shared schema must be packaged as a file, not a link"
        assert f"{chart}/charts/agent-common/Chart.yaml" in members
        assert not any("/ci/" in n for n in members)
    with helm.Chart.load_archive(archive.read_bytes()) as c:
        rendered = c.render({}, name=chart, namespace="flyte")
    deploy = by_kind(manifests(rendered))["Deployment"]
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":9.9.9")
