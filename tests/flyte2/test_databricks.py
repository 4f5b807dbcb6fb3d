"""Databricks, differential: for each flyte-sdk task, flyte-sdk's own connector and our
agent get the same CreateTaskRequest (the tenant's token in `connection.secrets` under
`databricks_token`, while the agent pod holds a different token the workspace also
accepts). flyte-sdk's HTTP is captured at aiohttp; ours reaches the emulator, which
records the run, its submitted body and which token submitted it."""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import types

import aiohttp
import grpc
import pytest
from flyteidl2.connector import connector_pb2 as c2
from flyteplugins.databricks.connector import DatabricksJobMetadata

import tasks
from conftest import (
    SUCCEEDED, Agent, Emulator, Ours, category, connection, create_error, create_request, get_json,
    numbers_normalised, oracle, workspace_binary,
)

POD_PAT, TENANT_PAT = "dapi-pod-0a1b2c3d4e", "dapi-tenant-9f8e7d6c5b"
POD, TENANT = 0, 1  # positions of the tokens in the emulator's --pat list

CASES = {
    "plain": (tasks.databricks_plain, {}),
    "inputs": (tasks.databricks_with_inputs, {"path": "s3://data/in.csv", "n": 4}),
}


@pytest.fixture(scope="module")
def ca_file():
    return os.path.join(tempfile.mkdtemp(prefix="dbx-oracle-ca-"), "ca.pem")


@pytest.fixture(scope="module")
def emulator(ca_file):
    e = Emulator("databricks", "--ca-out", ca_file, "--pending-ms", "50", "--running-ms", "150",
                 "--pat", POD_PAT, "--pat", TENANT_PAT)
    tasks.set_databricks_instance(e.host)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def agent(emulator, ca_file):
    a = Agent(workspace_binary("agent-databricks"), env={
        "FLYTE_DATABRICKS_INSTANCE": emulator.host, "SSL_CERT_FILE": ca_file,
        "_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN": POD_PAT})
    yield a
    assert a.stop() == 0, a.logs()


def emulator_json(emulator, ca_file, path):
    return get_json(f"https://{emulator.host}{path}", ssl.create_default_context(cafile=ca_file),
                    {"Authorization": f"Bearer {TENANT_PAT}"})


class _Response:
    def __init__(self, payload):
        self.status, self.reason, self._payload = 200, "OK", payload

    async def json(self):
        return self._payload

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


def run_oracle(request, run_id: int, run_get: dict):
    """flyte-sdk's CreateTask and GetTask on `request`, its aiohttp calls recorded: the
    submit answers with our run's id, and runs/get with the emulator's view of that run, so
    both sides end up describing the same run."""
    seen = types.SimpleNamespace(posts=[], gets=[])

    def post(self, url, headers=None, data=None, **kwargs):
        seen.posts.append((url, dict(headers or {}), json.loads(data)))
        return _Response({"run_id": run_id})

    def get(self, url, headers=None, **kwargs):
        seen.gets.append((url, dict(headers or {})))
        return _Response(run_get)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(aiohttp.ClientSession, "post", post)
        mp.setattr(aiohttp.ClientSession, "get", get)
        seen.meta = oracle("CreateTask", request).resource_meta
        seen.resource = oracle("GetTask", c2.GetTaskRequest(
            resource_meta=seen.meta, task_category=category(request.template), connection=request.connection)).resource
    return seen


@pytest.fixture(scope="module")
def cases(agent, emulator, ca_file):
    out = {}
    for name, (task, values) in CASES.items():
        template, inputs = tasks.serialize(task, **values)
        request = create_request(template, inputs, connection("databricks", databricks_token=TENANT_PAT))
        before = {r["run_id"] for r in emulator_json(emulator, ca_file, "/_emulator/databricks/runs")["runs"]}
        ours = Ours(agent, request)
        new = [r for r in emulator_json(emulator, ca_file, "/_emulator/databricks/runs")["runs"]
               if r["run_id"] not in before]
        assert len(new) == 1, f"{name}: our agent submitted {len(new)} runs"
        run = new[0]
        run_get = emulator_json(emulator, ca_file, f"/api/2.1/jobs/runs/get?run_id={run['run_id']}")
        out[name] = types.SimpleNamespace(request=request, ours=ours, run=run,
                                          sdk=run_oracle(request, run["run_id"], run_get))
    return out


@pytest.mark.parametrize("case", CASES)
def test_the_submitted_run_is_flyte_sdks(cases, emulator, case):
    c = cases[case]
    [(url, _, body)] = c.sdk.posts
    assert url == f"https://{emulator.host}/api/2.1/jobs/runs/submit"
    ours = {k: v for k, v in c.run["spec"].items() if k != "idempotency_token"}
    assert numbers_normalised(ours) == numbers_normalised(body)


@pytest.mark.parametrize("case", CASES)
def test_the_run_is_submitted_with_the_connections_token(cases, case):
    c = cases[case]
    [(_, headers, _)] = c.sdk.posts
    assert headers["Authorization"] == f"Bearer {TENANT_PAT}"
    assert (c.run["auth"], c.run["pat"]) == ("pat", TENANT), "our run was not submitted with the tenant's token"


@pytest.mark.parametrize("case", CASES)
def test_the_same_phase(cases, case):
    c = cases[case]
    assert c.ours.resource.phase == SUCCEEDED, c.ours.resource.message
    assert c.sdk.resource.phase == c.ours.resource.phase


@pytest.mark.parametrize("case", CASES)
def test_the_same_log_link(cases, case):
    c = cases[case]
    link = lambda l: (l.uri, l.name, l.link_type, l.ready)  # noqa: E731
    assert [link(l) for l in c.ours.resource.log_links] == [link(l) for l in c.sdk.resource.log_links]


@pytest.mark.parametrize("case", CASES)
def test_our_meta_decodes_as_flyte_sdks(cases, emulator, case):
    c = cases[case]
    ours = DatabricksJobMetadata.decode(c.ours.meta)  # strict: an unknown key raises
    assert ours == DatabricksJobMetadata(databricks_instance=emulator.host, run_id=str(c.run["run_id"]))
    assert ours == DatabricksJobMetadata.decode(c.sdk.meta)


def test_a_declared_token_missing_from_the_request_is_refused(agent, emulator, ca_file):
    template, inputs = tasks.serialize(tasks.databricks_plain)
    assert template.custom["secrets"]["databricks_token"] == "databricks_token"
    before = emulator_json(emulator, ca_file, "/_emulator/databricks/runs")["submit_requests"]
    err = create_error(agent, create_request(template, inputs))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    assert "databricks_token" in err.details()
    assert emulator_json(emulator, ca_file, "/_emulator/databricks/runs")["submit_requests"] == before
