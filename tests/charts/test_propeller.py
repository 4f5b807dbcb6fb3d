"""The Flyte configuration the charts print after install (NOTES): every block uses only keys
Flyte's config structs have (propeller_config.yaml, read from flyteorg/flyte), routes every
task type of every agent to the plugin and to the agent's rendered Service, keeps flyte-core's
plugin list whole, and starts a Propeller that also runs Spark on Kubernetes."""

import pathlib
import re

import helm_python as helm
import pytest
import yaml

from conftest import AGENT_CHARTS, CHARTS, ROOT, UMBRELLA, split_notes

FACTS = yaml.safe_load((pathlib.Path(__file__).parent / "propeller_config.yaml").read_text())
STRUCTS = FACTS["structs"]
VARIANTS = FACTS["variants"]
GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
# The plugin lists the charts ship, by the release that last enabled the plugin by default.
DEFAULT_PLUGINS = {
    (chart, plugin): FACTS["charts"][chart]["default_enabled_plugins"][ref]
    for chart in ("flyte-core", "flyte-binary")
    for plugin, ref in (("connector-service", "v1.16.8"), ("agent-service", "v1.15.3"))
}
ALL_AGENTS = {dep["alias"]: dep["name"] for dep in yaml.safe_load((CHARTS / UMBRELLA / "Chart.yaml").read_text())["dependencies"] if "alias" in dep}


# --- the facts, as a checker ------------------------------------------------------------


def struct_errors(node, value, path="$"):
    """Where `value` strays from the struct fact `node` (see propeller_config.yaml)."""
    if isinstance(node, str):
        node = {"leaf": node}
    if "ref" in node:
        return struct_errors(STRUCTS[node["ref"]], value, path)
    if "struct" in node:
        if not isinstance(value, dict):
            return [f"{path}: a struct, got {value!r}"]
        errors = []
        for key, item in value.items():
            if key not in node["struct"]:
                errors.append(f"{path}: no key {key!r} upstream (keys: {sorted(node['struct'])})")
            else:
                errors += struct_errors(node["struct"][key], item, f"{path}.{key}")
        return errors
    if "map" in node:
        if not isinstance(value, dict):
            return [f"{path}: a map, got {value!r}"]
        errors = []
        for key, item in value.items():
            if "keys_read" in node and key not in node["keys_read"]:
                errors.append(f"{path}: {key!r} is never read (read: {node['keys_read']})")
            errors += struct_errors(node["map"], item, f"{path}.{key}")
        return errors
    if "list" in node:
        if not isinstance(value, list):
            return [f"{path}: a list, got {value!r}"]
        return [e for i, item in enumerate(value) for e in struct_errors(node["list"], item, f"{path}[{i}]")]
    leaf = node["leaf"]
    ok = {
        "any": lambda v: True,
        "string": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "duration": lambda v: isinstance(v, str) and bool(GO_DURATION.match(v)),
    }[leaf](value)
    return [] if ok else [f"{path}: a {leaf}, got {value!r}"]


def test_the_checker_catches_what_propeller_would_not_read():
    doc = STRUCTS["flyte1_connector_document"]
    good = {"plugins": {"connector-service": {"connectors": {"a": {"endpoint": "x", "timeouts": {"GetTask": "1s"}}}}}}
    assert struct_errors(doc, good) == []
    for bad in [
        {"tasks": {"task-plugins": {"enabled_plugins": []}}},
        {"plugins": {"connector-service": {"agents": {}}}},
        {"plugins": {"connector-service": {"connectors": {"a": {"timeouts": {"ListAgents": "3s"}}}}}},
        {"plugins": {"connector-service": {"connectors": {"a": {"insecure": "true"}}}}},
        {"plugins": {"connector-service": {"connectors": {"a": {"defaultTimeout": "ten seconds"}}}}},
        {"plugins": {"agent-service": {}}},
    ]:
        assert struct_errors(doc, bad), bad
    assert struct_errors(STRUCTS["flyte2_document"], {"tasks": {"task-plugins": {"enabled-plugins": []}}})


# --- rendering ----------------------------------------------------------------------------


def render(chart, values, name, namespace):
    with helm.Chart.load(CHARTS / chart) as c:
        return c.render(values, name=name, namespace=namespace)


def annotated_types(chart, kind):
    meta = yaml.safe_load((CHARTS / chart / "Chart.yaml").read_text())
    raw = meta["annotations"][f"agents.flyte.org/{kind}-task-types"]
    return [t.strip() for t in raw.split(",") if t.strip()]


def rendered_services(rendered, chart):
    """(agent chart, Service) of every agent the render runs."""
    out = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        if chart == UMBRELLA:
            m = re.match(rf"^{UMBRELLA}/charts/([^/]+)/templates/", path)
            agent = ALL_AGENTS[m.group(1)] if m else None
        else:
            agent = chart
        for doc in yaml.safe_load_all(text):
            if doc and doc["kind"] == "Service":
                assert agent, path
                out.append((agent, doc))
    return out


def expected_routes(rendered, chart):
    """What the NOTES must route: per Service, its endpoint, TLS and task types."""
    routes = []
    for agent, svc in rendered_services(rendered, chart):
        (grpc,) = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
        meta = svc["metadata"]
        routes.append(
            {
                "name": meta["name"],
                "endpoint": f"k8s://{meta['name']}.{meta['namespace']}:{grpc['port']}",
                "tls": grpc["appProtocol"] == "https",
                "async": annotated_types(agent, "async"),
                "sync": annotated_types(agent, "sync"),
            }
        )
    return routes


def as_document(form, block):
    """The configuration document a block becomes once its chart renders it."""
    if form == "flyte-core values":
        assert set(block) == {"configmap"} and set(block["configmap"]) == {"enabled_plugins"}
        return block["configmap"]["enabled_plugins"]
    if form == "flyte-binary values":
        assert set(block) == {"enabled_plugins", "configuration"}
        return {"tasks": block["enabled_plugins"]["tasks"], "plugins": block["configuration"]["inline"]["plugins"]}
    return block


def check_routing(header, block, routes):
    """Every task type of every agent reaches the plugin and the agent's Service."""
    generation, plugin, form = re.match(r"^(Flyte [^,]+), ([a-z-]+): (.+)$", header).groups()
    flyte2 = generation == "Flyte 2"
    agent_service = plugin == "agent-service"
    doc = as_document(form, block)
    task_plugins = doc["tasks"]["task-plugins"]
    cfg = doc["plugins"][plugin]
    deployments = cfg["agents" if agent_service else "connectors"]
    static = cfg.get("agentForTaskTypes" if agent_service else "connectorForTaskTypes", {})
    list_rpc = "ListAgents" if agent_service else "ListConnectors"

    if flyte2:
        assert "enabled-plugins" not in task_plugins
    else:
        enabled = task_plugins["enabled-plugins"]
        # Helm and Propeller replace lists: the list keeps the chart's whole default.
        for chart in ("flyte-core", "flyte-binary"):
            if form == "Propeller configuration" or form.startswith(chart):
                assert set(DEFAULT_PLUGINS[chart, plugin]) | {plugin} <= set(enabled), enabled
        assert len(enabled) == len(set(enabled))

    assert set(deployments) == {r["name"] for r in routes}
    everything = []
    for r in routes:
        types = r["async"] + r["sync"]
        everything += types
        dep = deployments[r["name"]]
        assert dep["endpoint"] == r["endpoint"]
        assert dep["insecure"] is (not r["tls"])
        assert list_rpc in dep["timeouts"]
        assert ("ExecuteTaskSync" in dep["timeouts"]) == (bool(r["sync"]) and not flyte2)
        for t in types:
            assert task_plugins["default-for-task-types"][t] == plugin, (header, t)
        for t in r["async"]:
            assert static[t] == r["name"], (header, t)
        for t in r["sync"]:
            if flyte2:
                # No sync calls in Flyte 2: the agent answers in CreateTask.
                assert static[t] == r["name"]
            else:
                # A static entry is called asynchronously; discovery marks it sync.
                assert t not in static, (header, t)
    assert len(everything) == len(set(everything)), "two agents serve one task type"
    assert all(v in deployments for v in static.values())
    assert set(static) <= set(everything)
    if flyte2:
        assert set(everything) <= set(cfg["supportedTaskTypes"])


def check_notes(chart, values, name, namespace="flyte"):
    rendered = render(chart, values, name, namespace)
    notes = rendered[f"{chart}/templates/NOTES.txt"]
    intro, blocks = split_notes(notes)
    assert set(blocks) == set(VARIANTS), sorted(blocks)
    for header, block in blocks.items():
        errors = struct_errors(STRUCTS[VARIANTS[header]], block)
        assert errors == [], f"{header}:\n" + "\n".join(errors)
    routes = expected_routes(rendered, chart)
    for header, block in blocks.items():
        check_routing(header, block, routes)
    # Flyte 2 has no sync calls: a sync agent answers within CreateTask, so its CreateTask
    # deadline is the sync call's.
    flyte1 = blocks["Flyte 1.16 and later, connector-service: Propeller configuration"]["plugins"]["connector-service"]
    flyte2 = blocks["Flyte 2, connector-service: executor configuration"]["plugins"]["connector-service"]
    for r in routes:
        t1, t2 = flyte1["connectors"][r["name"]]["timeouts"], flyte2["connectors"][r["name"]]["timeouts"]
        assert t2["CreateTask"] == t1["ExecuteTaskSync" if r["sync"] else "CreateTask"]
    return intro, blocks, routes


AGENT_CASES = [
    ("default", {}, None, "flyte"),
    ("renamed", {}, "prod", "agents"),
    ("tls", {"tls": {"enabled": True, "secretName": "agent-tls"}}, None, "flyte"),
    ("port", {"service": {"port": 8443}, "propeller": {"timeouts": {"ExecuteTaskSync": "45s"}}}, None, "flyte"),
]


@pytest.mark.parametrize("chart", AGENT_CHARTS)
@pytest.mark.parametrize(("case", "values", "name", "namespace"), AGENT_CASES, ids=[c[0] for c in AGENT_CASES])
def test_agent_notes_use_upstream_keys_and_route_every_task_type(chart, case, values, name, namespace):
    _, _, routes = check_notes(chart, values, name or chart, namespace)
    assert len(routes) == 1


UMBRELLA_CASES = [
    ("all", {"agents": dict.fromkeys(ALL_AGENTS, True)}, "flyte-agents", "flyte"),
    ("subset", {"agents": {"databricks": True, "openai": True}}, "flyte-agents", "flyte"),
    ("one", {"agents": {"webhook": True}}, "agents", "data"),
    (
        "tls",
        {
            "agents": {"bigquery": True, "snowflake": True, "sensor": True},
            "global": {"tls": {"enabled": True, "secretName": "agents-tls"}, "propeller": {"defaultTimeout": "20s"}},
        },
        "flyte-agents",
        "flyte",
    ),
    ("own-names", {"agents": {"databricks": True}, "databricks": {"fullnameOverride": "dbx", "service": {"port": 9000}}}, "x", "flyte"),
]


@pytest.mark.parametrize(("case", "values", "name", "namespace"), UMBRELLA_CASES, ids=[c[0] for c in UMBRELLA_CASES])
def test_umbrella_notes_route_every_enabled_agent_in_one_configuration(case, values, name, namespace):
    _, blocks, routes = check_notes(UMBRELLA, values, name, namespace)
    enabled = [a for a, on in values["agents"].items() if on]
    assert len(routes) == len(enabled)
    if case == "tls":
        doc = blocks["Flyte 2, connector-service: executor configuration"]
        for dep in doc["plugins"]["connector-service"]["connectors"].values():
            assert dep["insecure"] is False and dep["defaultTimeout"] == "20s"


def test_umbrella_with_no_agent_says_how_to_pick_them():
    rendered = render(UMBRELLA, {}, "flyte-agents", "flyte")
    assert rendered_services(rendered, UMBRELLA) == []
    notes = rendered[f"{UMBRELLA}/templates/NOTES.txt"]
    assert "agents.databricks=true" in notes and not split_notes(notes)[1]


# --- Propeller's plugin registration, modelled -------------------------------------------


def propeller1_start(doc, plugin, k8s_plugins, discovered=()):
    """Flyte 1.16's handler Setup (handler.go) on `doc`: the plugin each task type resolves to,
    or the error Propeller stops with. `k8s_plugins` maps other enabled plugins to their task
    types; the agents' plugin registers what its registry holds at startup (discovered, the
    static routes, supportedTaskTypes)."""
    tp = doc["tasks"]["task-plugins"]
    enabled = set(tp.get("enabled-plugins", []))
    defaults = tp.get("default-for-task-types", {})
    for task_type, p in defaults.items():
        if enabled and p not in enabled:
            return f"cannot set default plugin [{p}] for task types [{task_type}]"
    cfg = doc["plugins"].get(plugin, {})
    static = cfg.get("agentForTaskTypes" if plugin == "agent-service" else "connectorForTaskTypes", {})
    supported = cfg.get("supportedTaskTypes", ["task_type_1", "task_type_2"] if plugin == "agent-service" else ["task_type_3", "task_type_4"])
    registered = {plugin: set(discovered) | set(static) | set(supported), **{p: set(t) for p, t in k8s_plugins.items()}}
    registered = {p: types for p, types in registered.items() if not enabled or p in enabled}
    chosen, claims = {}, {}
    for p, types in registered.items():
        for t in types:
            if defaults.get(t) == p:
                chosen[t] = p
            claims.setdefault(t, set()).add(p)
    for t, ps in claims.items():
        if t not in chosen:
            if len(ps) != 1:
                return f"Multiple plugins registered to handle task type: {t}"
            (chosen[t],) = ps
    return lambda t: chosen.get(t) or (plugin if t in set(discovered) | set(static) | set(supported) else "container")


def flyte2_start(doc, plugin, k8s_plugins):
    """The Flyte 2 executor's registry (executor/pkg/plugin/registry.go): the plugin a task
    type resolves to."""
    tp = doc["tasks"]["task-plugins"]
    cfg = doc["plugins"].get(plugin, {})
    plugins = {t: p for p, types in k8s_plugins.items() for t in types}
    for t in cfg.get("supportedTaskTypes", ["task_type_3", "task_type_4"]):
        plugins[t] = plugin
    for t, p in tp.get("default-for-task-types", {}).items():
        if p in plugins.values():
            plugins[t] = p
    return lambda t: plugins.get(t, "container")


SPARK_ON_K8S = {"spark": ["spark"]}


@pytest.mark.parametrize("chart", ["agent-databricks", UMBRELLA])
def test_spark_on_kubernetes_and_the_databricks_agent_start_together(chart):
    """databricks serves spark: with Spark on Kubernetes enabled too, Propeller starts and
    sends spark to the agents' plugin, whether the agent answered ListAgents yet or not."""
    values = {"agents": {"databricks": True, "openai": True}} if chart == UMBRELLA else {}
    _, blocks, routes = check_notes(chart, values, chart)
    types = [t for r in routes for t in r["async"] + r["sync"]]
    assert "spark" in types
    for header, block in blocks.items():
        generation, plugin, form = re.match(r"^(Flyte [^,]+), ([a-z-]+): (.+)$", header).groups()
        doc = as_document(form, block)
        # The user keeps Spark on Kubernetes in the list, as the NOTES tell them to.
        if "enabled-plugins" in doc["tasks"]["task-plugins"]:
            doc["tasks"]["task-plugins"]["enabled-plugins"].append("spark")
        assert doc["tasks"]["task-plugins"]["default-for-task-types"]["spark"] == plugin
        if generation == "Flyte 2":
            resolve = flyte2_start(doc, plugin, SPARK_ON_K8S)
            assert all(resolve(t) == plugin for t in types), header
            continue
        for discovered in ([], types):
            resolve = propeller1_start(doc, plugin, SPARK_ON_K8S, discovered)
            assert callable(resolve), f"{header}: {resolve}"
            asynchronous = [t for r in routes for t in r["async"]]
            assert all(resolve(t) == plugin for t in asynchronous + (types if discovered else [])), header


def test_the_model_fails_the_configuration_the_charts_printed_before():
    """The model is not vacuous: the old NOTES (no default-for-task-types) stop Propeller."""
    old = {
        "tasks": {"task-plugins": {"enabled-plugins": ["container", "sidecar", "k8s-array", "connector-service", "spark"]}},
        "plugins": {"connector-service": {"connectors": {"agent-databricks": {}}, "connectorForTaskTypes": {"spark": "agent-databricks"}}},
    }
    assert propeller1_start(old, "connector-service", SPARK_ON_K8S) == "Multiple plugins registered to handle task type: spark"
    old["tasks"]["task-plugins"]["default-for-task-types"] = {"spark": "connector-service"}
    old["tasks"]["task-plugins"]["enabled-plugins"].remove("connector-service")
    assert "cannot set default plugin" in propeller1_start(old, "connector-service", SPARK_ON_K8S)
    flyte2 = {"tasks": {"task-plugins": {}}, "plugins": {"connector-service": {"connectorForTaskTypes": {"spark": "a"}}}}
    assert flyte2_start(flyte2, "connector-service", SPARK_ON_K8S)("spark") == "spark"


# --- the README ---------------------------------------------------------------------------


def test_readme_shows_what_the_umbrella_prints():
    """The README's Propeller snippet is the umbrella's NOTES block for the values it shows."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploying on Kubernetes") :]
    values = yaml.safe_load(re.search(r"```yaml\n(# agents\.yaml.*?)```", section, re.S).group(1))
    notes = render(UMBRELLA, values, "flyte-agents", "flyte")[f"{UMBRELLA}/templates/NOTES.txt"]
    header = "# Flyte 1.16 and later, connector-service: flyte-core values"
    start = notes.index(header)
    end = notes.index("\n# Flyte", start + 1)
    assert notes[start:end].strip() in section, "README.md's snippet differs from the umbrella's NOTES.txt"
