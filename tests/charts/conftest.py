"""Shared fixtures of the chart checks: the charts with their library dependency built."""

import pathlib

import helm_python as helm
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
LIBRARY = "agent-common"
AGENT_CHARTS = sorted(
    p.name for p in CHARTS.iterdir() if (p / "Chart.yaml").is_file() and p.name != LIBRARY
)


@pytest.fixture(scope="session", autouse=True)
def dependencies_built():
    """`helm dependency update` for every agent chart: the library comes from file://."""
    helm.disable_logging()
    for chart in AGENT_CHARTS:
        helm.dependency_update(CHARTS / chart)
