"""Shared fixtures of the chart checks: the charts with their library dependency built."""

import pathlib
import re

import helm_python as helm
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
LIBRARY = "agent-common"
AGENT_CHARTS = sorted(p.name for p in CHARTS.glob("agent-*") if (p / "Chart.yaml").is_file() and p.name != LIBRARY)
# The umbrella chart installing every agent chart; tested by test_propeller.py, not per agent.
UMBRELLA = "flyte-agents"

# "# Flyte 1.16 and later, connector-service: Propeller configuration": one block of the NOTES.
NOTES_HEADER = re.compile(r"^# (Flyte [^,\n]+, [a-z-]+: [^\n]+)$", re.M)


@pytest.fixture(scope="session", autouse=True)
def dependencies_built():
    """`helm dependency update` for every agent chart (the library comes from file://), then
    for the umbrella, which packages the agent charts with their library inside."""
    helm.disable_logging()
    for chart in AGENT_CHARTS:
        helm.dependency_update(CHARTS / chart)
    helm.dependency_update(CHARTS / UMBRELLA)


def split_notes(notes):
    """The NOTES' explanation and its configuration blocks, parsed, by header."""
    parts = NOTES_HEADER.split(notes)
    intro, rest = parts[0], parts[1:]
    blocks = {}
    for header, text in zip(rest[::2], rest[1::2]):
        assert header not in blocks, f"two blocks named {header!r}"
        blocks[header] = yaml.safe_load(text)
    return intro, blocks
