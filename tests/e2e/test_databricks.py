"""agent-databricks end to end: templates from flytekitplugins-spark (Databricks and
DatabricksV2), the official flyteidl stubs, the agent binary, and the Databricks emulator
binary over HTTPS with a test CA."""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import time
import urllib.request
from collections import OrderedDict

import grpc
import pytest
from flyteidl.admin import agent_pb2
from flyteidl.core import identifier_pb2
from flyteidl.service import agent_pb2_grpc

from conftest import Agent, Emulator, workspace_binary

PAT = "dapi-emulator-token"
SUCCEEDED, FAILED = 3, 5


@pytest.fixture(scope="module")
def ca_file():
    d = tempfile.mkdtemp(prefix="dbx-ca-")
    return os.path.join(d, "ca.pem")


@pytest.fixture(scope="module")
def emulator(ca_file):
    e = Emulator("databricks", "--ca-out", ca_file, "--pending-ms", "50", "--running-ms", "150")
    yield e
    e.stop()


@pytest.fixture(scope="module")
def dbx_agent(emulator, ca_file):
    # Trust comes from SSL_CERT_FILE here, as a platform team would point it at a bundle.
    a = Agent(workspace_binary("agent-databricks"), env={
        "FLYTE_DATABRICKS_INSTANCE": emulator.host, "SSL_CERT_FILE": ca_file,
        "_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN": PAT})
    yield a
    assert a.stop() == 0, a.logs()
    assert PAT not in a.logs()


def control(emulator, ca_file, path, data=None, method=None):
    ctx = ssl.create_default_context(cafile=ca_file)
    req = urllib.request.Request(f"https://{emulator.host}{path}", method=method,
                                 data=json.dumps(data).encode() if data is not None else None,
                                 headers={"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=5, context=ctx).read())


def serialize(fn):
    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    settings = SerializationSettings(image_config=ImageConfig.auto_default_image(), project="proj", domain="dev", version="v1")
    return get_serializable(OrderedDict(), settings, fn).template.to_flyte_idl()


def databricks_task(config_cls, instance, **conf):
    from flytekit import task

    databricks_conf = {"run_name": "flyte e2e", "new_cluster": {"spark_version": "13.3.x", "num_workers": 1},
                       "timeout_seconds": 3600}
    databricks_conf.update(conf)

    @task(task_config=config_cls(spark_conf={"spark.driver.memory": "1000M"}, databricks_conf=databricks_conf,
                                 databricks_instance=instance))
    def hello(x: int) -> int:
        return x

    return hello


def metadata(execution: str) -> agent_pb2.TaskExecutionMetadata:
    return agent_pb2.TaskExecutionMetadata(namespace="proj-dev", task_execution_id=identifier_pb2.TaskExecutionIdentifier(
        task_id=identifier_pb2.Identifier(resource_type=identifier_pb2.TASK, project="proj", domain="dev", name="hello", version="v1"),
        node_execution_id=identifier_pb2.NodeExecutionIdentifier(
            node_id="n0", execution_id=identifier_pb2.WorkflowExecutionIdentifier(project="proj", domain="dev", name=execution))))


def run_to_end(agent, template, execution):
    stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
    create = agent_pb2.CreateTaskRequest(template=template, output_prefix="s3://b/o/0", task_execution_metadata=metadata(execution))
    meta = stub.CreateTask(create, timeout=10).resource_meta
    category = agent_pb2.TaskCategory(name=template.type, version=0)
    for _ in range(200):
        r = stub.GetTask(agent_pb2.GetTaskRequest(task_type=template.type, resource_meta=meta, task_category=category), timeout=10).resource
        if r.phase in (SUCCEEDED, FAILED, 4, 8):
            stub.DeleteTask(agent_pb2.DeleteTaskRequest(task_type=template.type, resource_meta=meta, task_category=category), timeout=10)
            return meta, r
        time.sleep(0.05)
    raise AssertionError("run did not finish")


def test_listed_with_both_task_types(dbx_agent):
    agents = agent_pb2_grpc.AgentMetadataServiceStub(dbx_agent.channel).ListAgents(agent_pb2.ListAgentsRequest()).agents
    assert [(a.name, sorted(c.name for c in a.supported_task_categories)) for a in agents] == \
        [("Databricks Connector", ["databricks", "spark"])]


def test_databricks_v2_and_v1_tasks_run_over_https(dbx_agent, emulator, ca_file):
    from flytekitplugins.spark import Databricks, DatabricksV2

    for cls, ty, execution in [(DatabricksV2, "databricks", "v2"), (Databricks, "spark", "v1")]:
        template = serialize(databricks_task(cls, emulator.host))
        assert template.type == ty
        meta, r = run_to_end(dbx_agent, template, execution)
        assert r.phase == SUCCEEDED, r.message
        assert r.log_links[0].name == "Databricks Console"
        decoded = json.loads(meta)
        assert "auth_token" not in decoded and PAT not in meta.decode()
        run = next(x for x in control(emulator, ca_file, "/_emulator/databricks/runs")["runs"] if str(x["run_id"]) == decoded["run_id"])
        spec = run["spec"]
        assert spec["new_cluster"]["num_workers"] == 1 and isinstance(spec["new_cluster"]["num_workers"], int)
        assert spec["timeout_seconds"] == 3600
        assert spec["new_cluster"]["docker_image"]["url"] == template.container.image
        assert spec["new_cluster"]["spark_env_vars"]["FLYTE_FAIL_ON_ERROR"] == "true"
        assert spec["spark_python_task"]["parameters"] == list(template.container.args)
        assert spec["idempotency_token"].startswith("flyte-")


def test_serverless_template(dbx_agent, emulator, ca_file):
    from flytekit import task
    from flytekitplugins.spark import DatabricksV2

    @task(task_config=DatabricksV2(databricks_conf={"run_name": "serverless", "environment_key": "default",
                                                    "environments": [{"environment_key": "default", "spec": {"client": "1"}}]},
                                   databricks_instance=emulator.host))
    def serverless(x: int) -> int:
        return x

    meta, r = run_to_end(dbx_agent, serialize(serverless), "serverless")
    assert r.phase == SUCCEEDED
    run = next(x for x in control(emulator, ca_file, "/_emulator/databricks/runs")["runs"] if str(x["run_id"]) == json.loads(meta)["run_id"])
    assert run["spec"]["tasks"][0]["task_key"] == "flyte_task"
    assert run["spec"]["environments"][0]["spec"]["environment_vars"]["FLYTE_FAIL_ON_ERROR"] == "true"


def test_repeated_create_is_one_run_and_python_metas_work(dbx_agent, emulator, ca_file):
    from flytekitplugins.spark import DatabricksV2
    from flytekitplugins.spark.connector import DatabricksJobMetadata

    template = serialize(databricks_task(DatabricksV2, emulator.host))
    stub = agent_pb2_grpc.AsyncAgentServiceStub(dbx_agent.channel)
    create = agent_pb2.CreateTaskRequest(template=template, output_prefix="s3://b/o/0", task_execution_metadata=metadata("once"))
    before = len(control(emulator, ca_file, "/_emulator/databricks/runs")["runs"])
    metas = {stub.CreateTask(create, timeout=10).resource_meta for _ in range(3)}
    assert len(metas) == 1
    assert len(control(emulator, ca_file, "/_emulator/databricks/runs")["runs"]) == before + 1
    # The Python agent's own 1.16.31 meta, with its stored token, is accepted.
    run_id = json.loads(metas.pop())["run_id"]
    py = DatabricksJobMetadata(databricks_instance=emulator.host, run_id=run_id, auth_token=PAT, auth_type="pat", client_id=None,
                               oauth_secret_name="databricks-oauth", oidc_token_file=None, oidc_service_account=None,
                               oidc_audience=None, namespace="").encode()
    category = agent_pb2.TaskCategory(name="databricks", version=0)
    r = stub.GetTask(agent_pb2.GetTaskRequest(task_type="databricks", resource_meta=py, task_category=category), timeout=10).resource
    assert r.phase in (1, 2, 3, 6), r


def test_other_instances_never_get_credentials(dbx_agent):
    from flytekitplugins.spark import DatabricksV2

    template = serialize(databricks_task(DatabricksV2, "attacker.example.com"))
    with pytest.raises(grpc.RpcError) as e:
        agent_pb2_grpc.AsyncAgentServiceStub(dbx_agent.channel).CreateTask(agent_pb2.CreateTaskRequest(template=template), timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "attacker.example.com" in e.value.details() and PAT not in e.value.details()


def test_oauth_m2m_with_a_configured_ca_bundle(emulator, ca_file):
    from flytekitplugins.spark import DatabricksV2

    a = Agent(workspace_binary("agent-databricks"), env={
        "FLYTE_DATABRICKS_AUTH_TYPE": "oauth_m2m", "DATABRICKS_CLIENT_ID": "emulator-client",
        "DATABRICKS_CLIENT_SECRET": "emulator-secret"},
        args=("--set", f"databricks.default_instance={emulator.host}", "--set", f"databricks.ca_bundle={ca_file}"))
    try:
        meta, r = run_to_end(a, serialize(databricks_task(DatabricksV2, emulator.host)), "oauth")
        assert r.phase == SUCCEEDED, r.message
        assert json.loads(meta)["auth_type"] == "oauth_m2m"
        assert "emulator-secret" not in a.logs() and "dbx-oauth-" not in meta.decode()
    finally:
        assert a.stop() == 0
