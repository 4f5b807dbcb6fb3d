"""The umbrella chart flyte-agents: every agent chart as a dependency switched on by
agents.NAME, each still its own Deployment, Service, HPA and PDB and rendered as its own
chart renders it; the settings under global reach every agent; the Grafana dashboard it
ships as a ConfigMap when asked; the release packages carry the agents at the release
version, and the dashboard. (Its NOTES are checked in test_propeller.py.)"""

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import AGENT_CHARTS, CHARTS, ROOT, UMBRELLA

KUBE_VERSIONS = ["1.32.0", "1.37.0"]
META = yaml.safe_load((CHARTS / UMBRELLA / "Chart.yaml").read_text())
VALUES = yaml.safe_load((CHARTS / UMBRELLA / "values.yaml").read_text())
ALIASES = {dep["alias"]: dep["name"] for dep in META["dependencies"] if "alias" in dep}
# The agent charts the umbrella installs (a test checks that is every agent chart).
UMBRELLA_AGENTS = sorted(ALIASES.values())
EVERY_AGENT = {"agents": dict.fromkeys(ALIASES, True)}
# The agents' Grafana dashboard, whose one copy is in the chart (test_observability.py checks
# its queries); grafanaDashboard.enabled ships it as a ConfigMap for Grafana's sidecar.
DASHBOARD_FILE = "dashboards/flyte-agents.json"
DASHBOARD_TEMPLATE = f"{UMBRELLA}/templates/grafana-dashboard.yaml"
WITH_DASHBOARD = {"grafanaDashboard": {"enabled": True}}


def render(values, name="flyte-agents", namespace="flyte", chart=UMBRELLA):
    with helm.Chart.load(CHARTS / chart) as c:
        return c.render(values, name=name, namespace=namespace)


def objects(rendered):
    """{(agent chart, kind): object} of a render, agent from the template's path."""
    out = {}
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        m = re.match(rf"^{UMBRELLA}/charts/([^/]+)/templates/", path)
        agent = ALIASES[m.group(1)] if m else path.split("/")[0]
        for doc in yaml.safe_load_all(text):
            if doc:
                key = (agent, doc["kind"])
                assert key not in out, f"two {key}"
                out[key] = doc
    return out


def test_every_agent_chart_is_a_dependency_switched_by_its_name():
    """A new agent chart belongs here too: add it to Chart.yaml, values.yaml and the schema."""
    assert sorted(ALIASES.values()) == AGENT_CHARTS, "charts/flyte-agents/Chart.yaml must list every agent chart"
    schema = yaml.safe_load((CHARTS / UMBRELLA / "values.schema.json").read_text())
    for dep in META["dependencies"]:
        local = yaml.safe_load((CHARTS / dep["name"] / "Chart.yaml").read_text())
        assert dep["repository"] == f"file://../{dep['name']}"
        assert dep["version"] == local["version"]
        if dep["name"] == "agent-common":
            continue
        alias = dep["name"].removeprefix("agent-")
        assert dep["alias"] == alias and dep["condition"] == f"agents.{alias}"
        assert VALUES["agents"][alias] is False, "agents are off until picked"
        # The Services keep the agent charts' names, so Propeller's endpoints do not change.
        assert VALUES[alias] == {"nameOverride": dep["name"], "fullnameOverride": dep["name"]}
        assert schema["properties"]["agents"]["properties"][alias] == {"type": "boolean"}
        assert schema["properties"][alias]["type"] == "object"


@pytest.mark.parametrize("values", [{}, EVERY_AGENT, {**EVERY_AGENT, **WITH_DASHBOARD}], ids=["none", "all", "dashboard"])
def test_lint_is_clean(values):
    report = helm.lint(CHARTS / UMBRELLA, values, strict=True, with_subcharts=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_only_the_picked_agents_are_installed():
    picked = {"databricks", "webhook"}
    objs = objects(render({"agents": dict.fromkeys(picked, True)}))
    assert {agent for agent, _ in objs} == {f"agent-{a}" for a in picked}
    assert objects(render({})) == {}


def test_every_agent_is_its_own_workload_and_valid():
    values = {
        **EVERY_AGENT,
        **{alias: {"autoscaling": {"enabled": True}} for alias in ALIASES},
    }
    objs = objects(render(values))
    for chart in UMBRELLA_AGENTS:
        kinds = {kind for agent, kind in objs if agent == chart}
        assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= kinds, chart
        assert objs[(chart, "Service")]["metadata"]["name"] == chart
        assert objs[(chart, "HorizontalPodAutoscaler")]["spec"]["scaleTargetRef"]["name"] == chart
    for doc in objs.values():
        if doc["kind"] in ("ServiceMonitor", "PodMonitor"):
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("chart", UMBRELLA_AGENTS)
def test_an_agent_renders_as_its_own_chart_does(chart):
    """Same objects as `helm install agent-NAME charts/agent-NAME`, but for the release
    labels (instance, chart), the selectors made of them and the checksums over them."""
    alias = chart.removeprefix("agent-")

    def normal(objs):
        text = yaml.safe_dump({kind: doc for (_, kind), doc in objs.items()}, sort_keys=True)
        text = re.sub(r"app\.kubernetes\.io/instance: \S+", "app.kubernetes.io/instance: X", text)
        text = re.sub(r"checksum/(config|secret): \S+", r"checksum/\1: X", text)
        return re.sub(r"helm\.sh/chart: \S+", "helm.sh/chart: X", text)

    own = normal(objects(render({}, name=chart, chart=chart)))
    umbrella = normal(objects(render({"agents": {alias: True}})))
    assert umbrella == own


def test_globals_reach_every_agent():
    values = {
        **EVERY_AGENT,
        "global": {
            "image": {"registry": "registry.example.com/team/", "tag": "2.0.0"},
            "imagePullSecrets": [{"name": "pull"}],
            "tls": {"enabled": True, "secretName": "agents-tls"},
            "metrics": {"enabled": False},
        },
        "databricks": {"image": {"tag": "1.9.0"}, "tls": {"secretName": "databricks-tls"}},
        "openai": {"imagePullSecrets": [{"name": "own"}]},
    }
    objs = objects(render(values))
    for chart in UMBRELLA_AGENTS:
        pod = objs[(chart, "Deployment")]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        tag = "1.9.0" if chart == "agent-databricks" else "2.0.0"
        assert container["image"] == f"registry.example.com/team/{chart}:{tag}"
        assert pod["imagePullSecrets"] == [{"name": "own" if chart == "agent-openai" else "pull"}]
        tls = next(v for v in pod["volumes"] if v["name"] == "tls")
        # A key set under global wins; one it leaves out stays the agent's.
        assert tls["secret"]["secretName"] == "agents-tls"
        assert "--metrics-port=0" in container["args"]
        assert [p["name"] for p in objs[(chart, "Service")]["spec"]["ports"]] == ["grpc"]


def test_a_standalone_chart_with_no_globals_is_unchanged():
    objs = objects(render({}, name="agent-databricks", chart="agent-databricks"))
    (container,) = objs[("agent-databricks", "Deployment")]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/flyte-agents-rs/agent-databricks:0.1.0"


def dashboard_configmap(rendered):
    """The dashboard ConfigMap of a render (None when there is none), with its parsed JSON."""
    docs = [d for d in yaml.safe_load_all(rendered.get(DASHBOARD_TEMPLATE, "")) if d]
    if not docs:
        return None, None
    (doc,) = docs
    assert doc["kind"] == "ConfigMap"
    assert list(doc["data"]) == ["flyte-agents.json"], "one dashboard, one key"
    return doc, json.loads(doc["data"]["flyte-agents.json"])


def test_the_dashboard_is_off_by_default():
    assert VALUES["grafanaDashboard"]["enabled"] is False
    for values in ({}, EVERY_AGENT):
        rendered = render(values)
        assert rendered.get(DASHBOARD_TEMPLATE, "").strip() == ""
        assert ("flyte-agents", "ConfigMap") not in objects(rendered)


@pytest.mark.parametrize("values", [WITH_DASHBOARD, {**EVERY_AGENT, **WITH_DASHBOARD}], ids=["alone", "with-agents"])
def test_the_dashboard_configmap_is_the_repository_dashboard_for_grafanas_sidecar(values):
    rendered = render(values)
    doc, board = dashboard_configmap(rendered)
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)
    assert board == json.loads((CHARTS / UMBRELLA / DASHBOARD_FILE).read_text())
    meta = doc["metadata"]
    assert meta["name"] == "flyte-agents-dashboard" and meta["namespace"] == "flyte"
    # The label kube-prometheus-stack's and the grafana chart's sidecars look for, as a string.
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["labels"]["app.kubernetes.io/instance"] == "flyte-agents"
    assert "annotations" not in meta
    # The agents' own objects are the same with it or without it.
    without = objects(render(values | {"grafanaDashboard": {"enabled": False}}))
    assert {k: v for k, v in objects(rendered).items() if k != ("flyte-agents", "ConfigMap")} == without


def test_the_dashboard_labels_annotations_and_namespace_are_configurable():
    values = {
        "grafanaDashboard": {
            "enabled": True,
            # A sidecar set up with label: dashboards, labelValue: flyte, folderAnnotation: grafana_folder.
            "labels": {"grafana_dashboard": None, "dashboards": "flyte", "team": "platform"},
            "annotations": {"grafana_folder": "Flyte", "k8s-sidecar-target-directory": "/tmp/dashboards/Flyte"},
            "namespace": "monitoring",
        }
    }
    doc, board = dashboard_configmap(render(values, name="agents"))
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)
    meta = doc["metadata"]
    assert meta["name"] == "agents-dashboard" and meta["namespace"] == "monitoring"
    assert "grafana_dashboard" not in meta["labels"]
    assert meta["labels"]["dashboards"] == "flyte" and meta["labels"]["team"] == "platform"
    assert meta["annotations"] == values["grafanaDashboard"]["annotations"]
    assert board["uid"] == json.loads((CHARTS / UMBRELLA / DASHBOARD_FILE).read_text())["uid"]
    # A label of the chart's own can be set too: the values win, no key is written twice.
    own = {"grafanaDashboard": {"enabled": True, "labels": {"app.kubernetes.io/part-of": "observability"}}}
    doc, _ = dashboard_configmap(render(own))
    assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "observability"
    assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_the_readme_dashboard_values_render():
    readme = (CHARTS / "README.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)]
    (shown,) = [b for b in blocks if isinstance(b, dict) and "grafanaDashboard" in b]
    doc, _ = dashboard_configmap(render(shown))
    assert doc["metadata"]["namespace"] == shown["grafanaDashboard"]["namespace"]
    assert doc["metadata"]["annotations"] == shown["grafanaDashboard"]["annotations"]
    assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "`grafanaDashboard.enabled` | false |" in readme


@pytest.mark.parametrize(
    "bad",
    [
        {"agents": {"spark": True}},
        {"agents": {"databricks": "yes"}},
        {"global": {"tls": {"enable": True}}},
        {"global": {"propeller": {"timeouts": {"GetTask": "soon"}}}},
        {"agents": {"databricks": True}, "databricks": {"enabled": True}},
        {"grafanaDashboard": {"enable": True}},
        {"grafanaDashboard": {"enabled": "true"}},
        {"grafanaDashboard": {"enabled": True, "labels": {"grafana_dashboard": 1}}},
        {"grafanaDashboard": {"enabled": True, "labels": {"bad key!": "1"}}},
        {"grafanaDashboard": {"enabled": True, "namespace": "Monitoring"}},
        {"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": ["Flyte"]}}},
    ],
    ids=lambda v: str(v),
)
def test_schema_rejects_bad_values(bad):
    with pytest.raises(helm.HelmValuesError):
        render(bad)


def test_release_packages_carry_the_agents_at_the_release_version(tmp_path):
    """`cargo xtask package-charts` (its Python program, run as the xtask runs it): the
    umbrella holds every agent chart, with its library, at the release version, so the
    agents run the release's images."""
    source = (ROOT / "xtask/src/charts.rs").read_text()
    program = re.search(r'const PACKAGE: &str = r#"(.*?)"#;', source, re.S).group(1)
    run = subprocess.run(
        [sys.executable, "-c", program, str(CHARTS), str(tmp_path), "9.9.9"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    archives = sorted(p.name for p in tmp_path.glob("*.tgz"))
    assert archives == sorted(f"{c}-9.9.9.tgz" for c in [*AGENT_CHARTS, UMBRELLA])
    archive = tmp_path / f"{UMBRELLA}-9.9.9.tgz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for chart in UMBRELLA_AGENTS:
        assert f"{UMBRELLA}/charts/{chart}/charts/agent-common/Chart.yaml" in names
    # The dashboard travels inside the chart, byte for byte, and the packaged chart ships it.
    with tarfile.open(archive) as tar:
        packed = tar.extractfile(f"{UMBRELLA}/{DASHBOARD_FILE}").read()
    assert packed == (CHARTS / UMBRELLA / DASHBOARD_FILE).read_bytes()
    with helm.Chart.load_archive(archive.read_bytes()) as c:
        rendered = c.render({**EVERY_AGENT, **WITH_DASHBOARD}, name="flyte-agents", namespace="flyte")
    _, board = dashboard_configmap(rendered)
    assert board == json.loads(packed)
    objs = objects(rendered)
    del objs[("flyte-agents", "ConfigMap")]
    for chart in UMBRELLA_AGENTS:
        (container,) = objs[(chart, "Deployment")]["spec"]["template"]["spec"]["containers"]
        assert container["image"].endswith(f"/{chart}:9.9.9")
    # The checkout is left as it was.
    assert yaml.safe_load((CHARTS / UMBRELLA / "Chart.yaml").read_text())["version"] == META["version"]


def test_readme_installs_from_a_checkout_in_the_order_that_works(tmp_path):
    """The commands the README gives, replayed with Helm's SDK on a fresh copy (no charts/
    dirs): the agent charts' dependencies, then the umbrella's, then an install renders."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploying on Kubernetes") :]
    assert "for chart in charts/agent-*/; do helm dependency update \"$chart\"; done" in section
    assert "helm dependency update charts/flyte-agents" in section
    copy = tmp_path / "charts"
    shutil.copytree(CHARTS, copy, symlinks=True, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    for chart in sorted(copy.glob("agent-*/")):
        helm.dependency_update(chart)
    helm.dependency_update(copy / UMBRELLA)
    with helm.Chart.load(copy / UMBRELLA) as c:
        rendered = c.render(EVERY_AGENT, name="flyte-agents", namespace="flyte")
    assert {agent for agent, _ in objects(rendered)} == set(UMBRELLA_AGENTS)
