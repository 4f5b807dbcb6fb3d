"""The Helm charts and the binaries agree: each chart's configuration (defaults and its ci/
scenarios, merged the way Helm merges values) starts its agent, and the task types the
chart routes in Propeller's configuration are exactly those the agent lists."""

import pathlib

import pytest
import yaml
from flyteidl.service import agent_pb2_grpc
from flyteidl.admin import agent_pb2

from conftest import ROOT, Agent, workspace_binary

CHARTS = ROOT / "charts"
AGENT_CHARTS = sorted(p.name for p in CHARTS.glob("agent-*") if p.name != "agent-common")


def merge(base, override):
    """Helm's coalescing of maps: nested maps merge, everything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def chart_configs(chart):
    defaults = yaml.safe_load((CHARTS / chart / "values.yaml").read_text())
    yield "default", defaults["config"]
    for path in sorted((CHARTS / chart / "ci").glob("*.yaml")):
        values = yaml.safe_load(path.read_text()) or {}
        yield path.stem, merge(defaults, values)["config"]


CASES = [(chart, name, config) for chart in AGENT_CHARTS for name, config in chart_configs(chart)]


def test_every_agent_crate_has_a_chart():
    crates = sorted(p.name for p in (ROOT / "crates").glob("agent-*") if p.name != "agent-core")
    assert crates == AGENT_CHARTS


@pytest.mark.parametrize(("chart", "name", "config"), CASES, ids=[f"{c}-{n}" for c, n, _ in CASES])
def test_chart_config_starts_the_agent_which_lists_the_charted_task_types(chart, name, config, tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    meta = yaml.safe_load((CHARTS / chart / "Chart.yaml").read_text())["annotations"]
    charted = {
        kind: sorted(t.strip() for t in meta[f"agents.flyte.org/{kind}-task-types"].split(",") if t.strip())
        for kind in ("async", "sync")
    }
    agent = Agent(workspace_binary(chart), env={"AGENT_CONFIG": str(config_file)})
    try:
        listed = agent_pb2_grpc.AgentMetadataServiceStub(agent.channel).ListAgents(agent_pb2.ListAgentsRequest())
        served = {"async": [], "sync": []}
        for a in listed.agents:
            served["sync" if a.is_sync else "async"].extend(c.name for c in a.supported_task_categories)
        assert {k: sorted(v) for k, v in served.items()} == charted
        # The chart's log format reached the agent: its log lines are JSON.
        assert agent.logs().lstrip().startswith("{"), agent.logs()
    finally:
        assert agent.stop() == 0
