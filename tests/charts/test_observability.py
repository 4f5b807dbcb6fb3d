"""Observability the charts ship: the PodMonitor beside the ServiceMonitor, the autoscaler's
calls-in-flight metric and the prometheus-adapter rule that serves it, and the Grafana
dashboard, whose every query must name metrics the agents export with labels they carry
(a renamed metric or label breaks these checks, not a dashboard in production)."""

import json
import pathlib
import re

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import AGENT_CHARTS, CHARTS, ROOT, UMBRELLA
from test_charts import by_kind, manifests
from test_charts import render as render_chart

KUBE_VERSIONS = ["1.32.0", "1.37.0"]
OBSERVABILITY = CHARTS / "observability"
# The one copy of the dashboard: inside the umbrella chart, which ships it as a ConfigMap
# (Helm reads only files inside a chart); test_umbrella.py checks that ConfigMap.
DASHBOARD = CHARTS / UMBRELLA / "dashboards/flyte-agents.json"
# Grafana knows a dashboard by its uid: a new one makes an imported or provisioned copy a
# second dashboard, beside the old one, with links and bookmarks pointing at the old one.
DASHBOARD_UID = "flyte-agents-rs"
ADAPTER_VALUES = OBSERVABILITY / "prometheus-adapter-values.yaml"
IN_FLIGHT = "flyte_agent_requests_in_flight"


AGENTS = AGENT_CHARTS


def render(chart, values, name=None, namespace="flyte"):
    return manifests(render_chart(chart, values, name=name, namespace=namespace))


kinds = by_kind


def test_there_are_agent_charts():
    assert len(AGENTS) >= 6, AGENTS


# --- prometheus-operator objects ---------------------------------------------------------

# The parts of prometheus-operator's CRDs (monitoring.coreos.com/v1, operator 0.91) the
# charts write, with the CRDs' own duration pattern; kubernetes_validate ships no CRDs.
# Unknown fields are refused here, as the API server's structural schema would prune them.
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}, "minProperties": 1}},
    "required": ["matchLabels"],
}
METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["name", "namespace", "labels"],
}
RELABELING = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {"enum": ["replace", "Replace", "labeldrop", "LabelDrop"]},
        "targetLabel": {"type": "string"},
        "replacement": {"type": "string"},
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "regex": {"type": "string"},
    },
}
ENDPOINT_FIELDS = {
    "port": {"type": "string", "minLength": 1},
    "path": {"type": "string", "pattern": "^/"},
    "interval": DURATION,
    "scrapeTimeout": DURATION,
    "relabelings": {"type": "array", "items": RELABELING},
}


def crd_schema(kind, endpoints_key):
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "selector": LABEL_SELECTOR,
                    endpoints_key: {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "object", "additionalProperties": False, "properties": ENDPOINT_FIELDS},
                    },
                },
                "required": ["selector", endpoints_key],
            },
        },
        "required": ["apiVersion", "kind", "metadata", "spec"],
    }


POD_MONITOR_SCHEMA = crd_schema("PodMonitor", "podMetricsEndpoints")
SERVICE_MONITOR_SCHEMA = crd_schema("ServiceMonitor", "endpoints")


# prometheus-operator labels every target with `endpoint` (the port name); the agents' own
# `endpoint` label (host:port of a service, http/limit.rs) would become exported_endpoint.
DROP_ENDPOINT = {"action": "labeldrop", "regex": "endpoint"}


def seconds(duration):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|y|w|d|h|m|s)", duration))


POD_MONITOR_CASES = [
    pytest.param({}, None, "flyte", id="defaults"),
    pytest.param(
        {"metrics": {"port": 9191, "podMonitor": {"interval": "15s", "scrapeTimeout": "5s", "labels": {"release": "prometheus"}}}},
        "prod",
        "agents",
        id="port-interval-labels-release",
    ),
    pytest.param({"tls": {"enabled": True, "secretName": "agent-tls"}, "metrics": {"scrapeAnnotations": False}}, None, "flyte", id="tls-no-annotations"),
]


@pytest.mark.parametrize("chart", AGENTS)
@pytest.mark.parametrize(("extra", "release", "namespace"), POD_MONITOR_CASES)
def test_pod_monitor_scrapes_the_deployments_metrics_port(chart, extra, release, namespace):
    values = {**extra, "metrics": {**extra.get("metrics", {}), "podMonitor": {"enabled": True, **extra.get("metrics", {}).get("podMonitor", {})}}}
    objs = kinds(render(chart, values, name=release, namespace=namespace))
    pm = objs["PodMonitor"]
    jsonschema.validate(pm, POD_MONITOR_SCHEMA)
    assert "ServiceMonitor" not in objs
    assert pm["metadata"]["namespace"] == namespace

    deploy = objs["Deployment"]
    template = deploy["spec"]["template"]
    (container,) = template["spec"]["containers"]
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    # The port is the container port's name, on the port the agent serves metrics on.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = values["metrics"].get("port", 9090)
    assert ports[endpoint["port"]] == port
    assert f"--metrics-port={port}" in container["args"]
    assert endpoint["path"] == "/metrics"
    annotations = template["metadata"]["annotations"]
    if values["metrics"].get("scrapeAnnotations", True):
        assert annotations["prometheus.io/path"] == endpoint["path"]
        assert annotations["prometheus.io/port"] == str(port)
    else:
        assert "prometheus.io/scrape" not in annotations
    # It selects exactly this release's pods.
    assert pm["spec"]["selector"] == deploy["spec"]["selector"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    # Timing and labels from the values; Prometheus refuses a timeout longer than the interval.
    pod_monitor = values["metrics"]["podMonitor"]
    assert endpoint["interval"] == pod_monitor.get("interval", "30s")
    assert endpoint["scrapeTimeout"] == pod_monitor.get("scrapeTimeout", "10s")
    assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])
    assert pod_monitor.get("labels", {}).items() <= pm["metadata"]["labels"].items()
    # The job is the Service's name, as a ServiceMonitor would make it: the dashboard's job
    # variable and any alert work whichever monitor scrapes.
    drop, job = endpoint["relabelings"]
    assert drop == DROP_ENDPOINT
    assert job == {"action": "replace", "targetLabel": "job", "replacement": objs["Service"]["metadata"]["name"]}


@pytest.mark.parametrize("chart", AGENTS)
def test_service_monitor_has_the_crd_shape_and_names_the_services_metrics_port(chart):
    objs = kinds(render(chart, {"metrics": {"serviceMonitor": {"enabled": True}}}))
    sm = objs["ServiceMonitor"]
    jsonschema.validate(sm, SERVICE_MONITOR_SCHEMA)
    assert "PodMonitor" not in objs
    (endpoint,) = sm["spec"]["endpoints"]
    svc_ports = {p["name"]: p for p in objs["Service"]["spec"]["ports"]}
    (container,) = objs["Deployment"]["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"] for p in container["ports"]}
    assert svc_ports[endpoint["port"]]["targetPort"] in container_ports
    assert endpoint["path"] == "/metrics"
    assert endpoint["relabelings"] == [DROP_ENDPOINT]


def test_pod_monitor_renders_nothing_by_default_or_without_metrics():
    chart = AGENTS[0]
    assert "PodMonitor" not in kinds(render(chart, {}))
    objs = kinds(render(chart, {"metrics": {"enabled": False, "podMonitor": {"enabled": True}}}))
    assert "PodMonitor" not in objs and "ServiceMonitor" not in objs


def test_pod_monitor_and_service_monitor_together_are_refused_with_the_reason():
    both = {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}}
    with pytest.raises(helm.HelmRenderError, match="scrape every pod twice"):
        render(AGENTS[0], both)


def test_the_other_manifests_stay_valid_with_a_pod_monitor_and_in_flight_scaling():
    values = {
        "metrics": {"podMonitor": {"enabled": True}},
        "autoscaling": {"enabled": True, "callsInFlight": {"enabled": True}},
    }
    for doc in render(AGENTS[0], values):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


# --- autoscaling on calls in flight ------------------------------------------------------


def hpa_metrics(chart, autoscaling):
    objs = kinds(render(chart, {"autoscaling": autoscaling}))
    hpa = objs.get("HorizontalPodAutoscaler")
    if hpa is not None:
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert "replicas" not in objs["Deployment"]["spec"]
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(hpa, version, strict=True)
    return objs, hpa


def pods_metric(target="500"):
    return {
        "type": "Pods",
        "pods": {"metric": {"name": IN_FLIGHT}, "target": {"type": "AverageValue", "averageValue": target}},
    }


@pytest.mark.parametrize("chart", AGENTS)
def test_hpa_scales_on_calls_in_flight_alone(chart):
    defaults = yaml.safe_load((CHARTS / chart / "values.yaml").read_text())["autoscaling"]
    assert defaults["callsInFlight"]["enabled"] is False
    _, hpa = hpa_metrics(chart, {"enabled": True, "targetCPUUtilizationPercentage": None, "callsInFlight": {"enabled": True}})
    assert hpa["spec"]["metrics"] == [pods_metric(str(defaults["callsInFlight"]["targetAverageValue"]))]


def test_hpa_combines_cpu_memory_and_calls_in_flight():
    _, hpa = hpa_metrics(
        AGENTS[0],
        {
            "enabled": True,
            "targetCPUUtilizationPercentage": 60,
            "targetMemoryUtilizationPercentage": 80,
            "callsInFlight": {"enabled": True, "targetAverageValue": 250},
        },
    )
    resources = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"}
    assert resources == {
        "cpu": {"type": "Utilization", "averageUtilization": 60},
        "memory": {"type": "Utilization", "averageUtilization": 80},
    }
    assert [m for m in hpa["spec"]["metrics"] if m["type"] != "Resource"] == [pods_metric("250")]


@pytest.mark.parametrize(("given", "rendered"), [(1000, "1000"), ("1500m", "1500m"), ("2k", "2k")])
def test_hpa_target_is_a_kubernetes_quantity(given, rendered):
    _, hpa = hpa_metrics(AGENTS[0], {"enabled": True, "callsInFlight": {"enabled": True, "targetAverageValue": given}})
    assert hpa["spec"]["metrics"][-1] == pods_metric(rendered)


def test_cpu_only_stays_as_it_was():
    _, hpa = hpa_metrics(AGENTS[0], {"enabled": True})
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_no_hpa_when_autoscaling_is_off_even_with_calls_in_flight_on():
    objs, hpa = hpa_metrics(AGENTS[0], {"enabled": False, "callsInFlight": {"enabled": True}})
    assert hpa is None
    assert objs["Deployment"]["spec"]["replicas"] == 2


def test_an_hpa_without_any_metric_is_refused_with_the_reason():
    with pytest.raises(helm.HelmRenderError, match="give the autoscaler a metric"):
        render(AGENTS[0], {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}})


@pytest.mark.parametrize(
    "bad",
    [
        {"metrics": {"podMonitor": {"enabled": "yes"}}},
        {"metrics": {"podMonitor": {"interval": "1.5s"}}},
        {"metrics": {"podMonitor": {"scrapeTimeout": "10"}}},
        {"metrics": {"podMonitor": {"labels": {"release": 1}}}},
        {"metrics": {"podMonitor": {"enable": True}}},
        {"metrics": {"serviceMonitor": {"interval": "half a minute"}}},
        {"autoscaling": {"callsInFlight": {"targetAverageValue": 0}}},
        {"autoscaling": {"callsInFlight": {"targetAverageValue": "lots"}}},
        {"autoscaling": {"callsInFlight": {"metric": "x"}}},
    ],
    ids=lambda v: json.dumps(v),
)
def test_schema_rejects_bad_observability_values(bad):
    with pytest.raises(helm.HelmValuesError):
        render(AGENTS[0], bad)


def test_every_agent_chart_and_the_scaffold_share_the_observability_defaults():
    """`cargo xtask new-agent` writes charts from xtask/templates/chart: its values must carry
    the same keys, or a new chart's defaults drift from the others'."""

    def sections(text):
        values = yaml.safe_load(text)
        return values["metrics"], values["autoscaling"]

    expected = sections((CHARTS / AGENTS[0] / "values.yaml").read_text())
    for chart in AGENTS[1:]:
        assert sections((CHARTS / chart / "values.yaml").read_text()) == expected, chart
    scaffold = (ROOT / "xtask/templates/chart/values.yaml.tmpl").read_text()
    assert sections(scaffold) == expected


def test_prometheus_adapter_rule_serves_the_metric_the_hpa_asks_for():
    config = yaml.safe_load(ADAPTER_VALUES.read_text())
    (rule,) = config["rules"]["custom"]
    assert re.fullmatch(IN_FLIGHT + r'\{namespace!="",pod!=""\}', rule["seriesQuery"])
    assert re.fullmatch(rule["name"]["matches"], IN_FLIGHT)
    assert rule["name"]["as"] == IN_FLIGHT
    # Per pod and namespace: what a Pods metric of an HPA is looked up by.
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]
    _, hpa = hpa_metrics(AGENTS[0], {"enabled": True, "callsInFlight": {"enabled": True}})
    assert hpa["spec"]["metrics"][-1]["pods"]["metric"]["name"] == rule["name"]["as"]


# --- Grafana dashboard ---------------------------------------------------------------------

# Target labels Prometheus adds (prometheus-operator's `endpoint` is dropped, see above).
COMMON_LABELS = {"namespace", "job", "pod", "instance", "container", "service"}
REQUEST = {"task_type", "operation", "protocol"}
SERVICE = {"agent", "endpoint"}
# What the agents export (crates/agent-core/src/telemetry.rs, http/limit.rs, and the
# process collector with Prometheus client libraries' names), with each metric's labels.
COUNTERS_AND_GAUGES = {
    "flyte_connector_requests_success_total": REQUEST,
    "flyte_connector_requests_failure_total": REQUEST | {"error_code"},
    IN_FLIGHT: set(),
    "flyte_agent_service_concurrency_limit": SERVICE,
    "flyte_agent_service_calls_in_flight": SERVICE,
    "flyte_agent_service_calls_waiting": SERVICE,
    "flyte_agent_service_throttled_total": SERVICE,
    "flyte_agent_service_calls_refused_total": SERVICE,
    "process_cpu_seconds_total": set(),
    "process_resident_memory_bytes": set(),
    "process_virtual_memory_bytes": set(),
    "process_open_fds": set(),
    "process_max_fds": set(),
    "process_start_time_seconds": set(),
    "process_threads": set(),
}
HISTOGRAMS = {
    "flyte_connector_request_latency_seconds": REQUEST,
    "flyte_connector_input_literal_bytes": {"task_type"},
}
EXPORTED = dict(COUNTERS_AND_GAUGES)
for _name, _labels in HISTOGRAMS.items():
    EXPORTED[f"{_name}_bucket"] = _labels | {"le"}
    EXPORTED[f"{_name}_sum"] = _labels
    EXPORTED[f"{_name}_count"] = _labels
# Operators and keywords that look like names; anything followed by "(" is a function.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}


def test_the_agents_export_the_names_the_dashboard_is_checked_against():
    """The agent-side names, found in the Rust source: renaming one there fails here."""
    source = "\n".join(p.read_text() for p in (ROOT / "crates/agent-core/src").rglob("*.rs"))
    for name in [*HISTOGRAMS, *(n for n in COUNTERS_AND_GAUGES if n.startswith("flyte_"))]:
        assert f'"{name}"' in source, f"{name} is not a metric name in crates/agent-core/src"
    for label in ("task_type", "operation", "protocol", "error_code", "agent", "endpoint"):
        assert f'"{label}"' in source, label


def dashboard():
    return json.loads(DASHBOARD.read_text())


def all_panels(board):
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def queries(board):
    """(where, PromQL) for every panel target and every query variable."""
    out = []
    for p in all_panels(board):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable {v['name']}", q))
    return out


def strip(expr):
    """The expression without strings, label matchers, ranges and grouping clauses."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)


def metric_names(expr):
    m = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*,\s*(\w+)\s*\)\s*", expr)
    if m:
        return {m.group(1)}
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", strip(expr)):
        if not m.group(2) and m.group(1) not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


def call_arguments(expr, function):
    """The argument text of every call of `function` in `expr` (parentheses balanced)."""
    out = []
    for m in re.finditer(rf"\b{function}\s*\(", expr):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        out.append(expr[m.end() : i - 1])
    return out


def test_the_dashboard_is_in_one_place():
    """No second copy to drift: every Grafana dashboard under charts/ is the chart's file."""
    boards = [p for p in CHARTS.rglob("*.json") if "panels" in json.loads(p.read_text())]
    assert boards == [DASHBOARD]


def test_dashboard_parses_and_has_the_template_variables():
    board = dashboard()
    assert board["uid"] == DASHBOARD_UID and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["multi"] and variables[name]["includeAll"]
        # "All" must be the list of the agents' jobs, not ".*": the process_* metrics
        # of every other job would otherwise join the panels.
        assert "allValue" not in variables[name] or variables[name]["allValue"] in (None, "")
    ids = [p["id"] for p in all_panels(board)]
    assert len(ids) == len(set(ids))
    for p in all_panels(board):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}"


def test_dashboard_queries_name_only_exported_metrics_with_their_labels():
    board = dashboard()
    used = set()
    for where, expr in queries(board):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - EXPORTED.keys()
        assert not unknown, f"{where}: {sorted(unknown)} are not exported by the agents"
        used |= names
        # Grouping and legends only use labels every series in the expression carries.
        carried = set.intersection(*(EXPORTED[n] for n in names)) | COMMON_LABELS
        for clause in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            grouped = {label.strip() for label in clause.split(",") if label.strip()}
            assert grouped <= carried, f"{where}: grouped by {sorted(grouped - carried)}, which {sorted(names)} lack"
    for p in all_panels(board):
        for t in p.get("targets", []):
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
            grouped = set().union(*({x.strip() for x in c.split(",")} for c in re.findall(r"\bby\s*\(([^)]*)\)", t["expr"])))
            assert legend <= grouped, f"{p['title']}: legend {sorted(legend - grouped)} is aggregated away"
    # Every agent-specific series is on the dashboard.
    for name in [*COUNTERS_AND_GAUGES, *(f"{h}_bucket" for h in HISTOGRAMS)]:
        if name.startswith("flyte_"):
            assert name in used, f"{name} is on no panel"
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"):
        assert name in used, f"{name} is on no panel"


def test_dashboard_selects_by_namespace_and_job_everywhere():
    for where, expr in queries(dashboard()):
        if where.startswith("variable namespace"):
            continue
        for name in metric_names(expr):
            selectors = re.findall(rf"(?<![\w:]){re.escape(name)}(?![\w:])\s*(\{{[^}}]*\}})?", expr)
            assert selectors, f"{where}: {name}"
            for sel in selectors:
                assert 'namespace=~"$namespace"' in sel, f"{where}: {name} without the namespace variable"
                if where.startswith("panel"):
                    assert 'job=~"$job"' in sel, f"{where}: {name} without the job variable"


def test_dashboard_quantiles_come_from_buckets_summed_by_le():
    board = dashboard()
    quantiles = {}
    for where, expr in queries(board):
        calls = call_arguments(expr, "histogram_quantile")
        if "_bucket" in expr:
            assert calls, f"{where}: buckets outside histogram_quantile"
        for args in calls:
            phi, inner = args.split(",", 1)
            assert 0 < float(phi) < 1, where
            # sum by (le, ...) (rate(X_bucket{...}[...])): aggregated across replicas, le kept.
            m = re.fullmatch(r"\s*sum\s+by\s*\(([^)]*)\)\s*\(\s*rate\(\s*([a-zA-Z_:][\w:]*)\{[^}]*\}\[[^\]]+\]\s*\)\s*\)\s*", inner)
            assert m, f"{where}: {inner!r} is not sum by (le, ...) (rate(..._bucket[...]))"
            assert "le" in {x.strip() for x in m.group(1).split(",")}, where
            bucket = m.group(2)
            assert bucket.endswith("_bucket") and bucket.removesuffix("_bucket") in HISTOGRAMS, where
            quantiles.setdefault(bucket, set()).add(float(phi))
    assert quantiles["flyte_connector_request_latency_seconds_bucket"] >= {0.5, 0.95, 0.99}


def test_dashboard_covers_what_an_operator_looks_at():
    titles = " | ".join(p["title"].lower() for p in all_panels(dashboard()))
    for topic in ("requests/s", "error", "latency", "in flight", "limit", "waiting", "throttled", "refused", "memory", "cpu", "file descriptors", "restarts"):
        assert topic in titles, topic


def test_readme_shows_the_adapter_rule_the_file_ships():
    readme = (CHARTS / "README.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)]
    shown = [b for b in blocks if isinstance(b, dict) and "rules" in b]
    assert shown == [yaml.safe_load(ADAPTER_VALUES.read_text())]


def test_readme_documents_the_observability_values():
    rows = (CHARTS / "README.md").read_text()
    for key in ("`metrics.podMonitor.enabled` / `interval` / `scrapeTimeout` / `labels`", "`autoscaling.callsInFlight.enabled` / `targetAverageValue`"):
        assert key in rows, key


def test_readme_links_to_the_observability_files_that_are_there():
    """The dashboard and the adapter rule, linked and named where they are (they have moved)."""
    readme = (CHARTS / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#:]+)\)", readme):
        assert (CHARTS / target).exists(), target
    for path in (DASHBOARD, ADAPTER_VALUES):
        relative = path.relative_to(CHARTS).as_posix()
        assert f"]({relative})" in readme and f"charts/{relative}" in readme, relative
