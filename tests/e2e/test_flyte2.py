"""Flyte 2 end to end: the official flyteidl2 stubs (AsyncConnectorService,
ConnectorMetadataService) against every agent binary and its emulator, with templates
serialized by flytekit's plugins. Covers discovery, create → get → delete, per-request
`connection` secrets winning over the pod's, sync agents through the async service, and
one binary answering Flyte 1 and Flyte 2 clients at once."""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.request
from concurrent import futures

import grpc
import pytest
from flyteidl.admin import agent_pb2
from flyteidl.service import agent_pb2_grpc
from flyteidl2.connector import connector_pb2 as c2
from flyteidl2.connector import service_pb2_grpc as s2
from flyteidl2.core import literals_pb2 as lit2
from flyteidl2.core import security_pb2, tasks_pb2
from flyteidl2.task import common_pb2

import test_agent_protocol as proto1
import test_bigquery
import test_databricks
import test_openai
import test_snowflake
from conftest import SECRET_VALUE, Agent, Emulator, remember_secrets, workspace_binary

SUCCEEDED, FAILED, RETRYABLE_FAILED, RUNNING = 3, 5, 8, 2
TERMINAL = (SUCCEEDED, FAILED, RETRYABLE_FAILED, 4)


# --- Flyte 2 requests, built the way a Flyte 2 backend fills them -------------------------

def v2(msg, cls):
    """A Flyte 1 message as its Flyte 2 counterpart: the shared core types keep their numbers."""
    return cls.FromString(msg.SerializeToString())


def inputs(literal_map) -> common_pb2.Inputs:
    return common_pb2.Inputs(literals=[
        common_pb2.NamedLiteral(name=k, value=v2(literal_map.literals[k], lit2.Literal))
        for k in sorted(literal_map.literals)])


def connection(task_type: str, **secrets: str) -> security_pb2.Connection:
    # Whatever a test sends as a secret must never come back, like the pod's secrets.
    remember_secrets({f"_FSEC_{k.upper()}": v for k, v in secrets.items()})
    return security_pb2.Connection(task_type=task_type, secrets=secrets)


def create_request(template, literal_map=None, conn=None, metadata=None) -> c2.CreateTaskRequest:
    return c2.CreateTaskRequest(
        template=v2(template, tasks_pb2.TaskTemplate),
        inputs=inputs(literal_map) if literal_map is not None else None,
        output_prefix="s3://bucket/flyte2/0",
        task_execution_metadata=v2(metadata, c2.TaskExecutionMetadata) if metadata is not None else None,
        connection=conn)


def category(task_type: str) -> c2.TaskCategory:
    return c2.TaskCategory(name=task_type, version=0)


def run(agent: Agent, create: c2.CreateTaskRequest, conn=None, delete=True):
    """CreateTask, GetTask until terminal, then DeleteTask; each call with `conn`."""
    stub = s2.AsyncConnectorServiceStub(agent.channel)
    meta = stub.CreateTask(create, timeout=15).resource_meta
    cat = category(create.template.type)
    for _ in range(300):
        r = stub.GetTask(c2.GetTaskRequest(resource_meta=meta, task_category=cat, output_prefix=create.output_prefix,
                                           connection=conn), timeout=10).resource
        if r.phase in TERMINAL:
            if delete:
                stub.DeleteTask(c2.DeleteTaskRequest(resource_meta=meta, task_category=cat, connection=conn), timeout=10)
            return meta, r
        assert r.phase in (1, RUNNING, 6, 7), r
        time.sleep(0.05)
    raise AssertionError("the task did not finish")


def connectors(agent: Agent) -> dict[str, list[str]]:
    listed = s2.ConnectorMetadataServiceStub(agent.channel).ListConnectors(c2.ListConnectorsRequest(), timeout=5)
    return {a.name: sorted(c.name for c in a.supported_task_categories) for a in listed.connectors}


def outputs(r: c2.Resource) -> dict:
    return {n.name: n.value for n in r.outputs.literals}


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, **kwargs)
    return e.value


# --- the test agent: the protocol itself ---------------------------------------------------

def test_discovery_lists_the_same_agents_as_flyte1(agent):
    v1 = agent_pb2_grpc.AgentMetadataServiceStub(agent.channel).ListAgents(agent_pb2.ListAgentsRequest()).agents
    assert connectors(agent) == {a.name: sorted(c.name for c in a.supported_task_categories) for a in v1}
    one = s2.ConnectorMetadataServiceStub(agent.channel).GetConnector(c2.GetConnectorRequest(name="Test Sync Agent"))
    assert [c.name for c in one.connector.supported_task_categories] == ["test_sync"]
    err = rpc_error(s2.ConnectorMetadataServiceStub(agent.channel).GetConnector, c2.GetConnectorRequest(name="nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_async_and_sync_tasks_and_errors(agent):
    _, r = run(agent, create_request(proto1.template("test_async", duration_ms=100), proto1.int_inputs(x=4)))
    assert r.phase == SUCCEEDED and outputs(r)["y"].scalar.primitive.integer == 8
    assert r.log_links[0].name == "Test Console" and r.log_links[0].ready and r.log_links[0].link_type == 1  # DASHBOARD
    # A sync agent: the create runs the call, the get returns the result carried in the meta.
    meta, r = run(agent, create_request(proto1.template("test_sync"), test_openai.string_inputs(name="flyte2")))
    assert r.phase == SUCCEEDED and outputs(r)["greeting"].scalar.primitive.string_value == "hello, flyte2"
    assert c2.Resource.FromString(meta) == r
    # Served as create ("do", the sync call) and get, both counted under Flyte 2.
    lines = agent.scrape_metrics().splitlines()
    for op in ("do", "get"):
        assert any(l.startswith("flyte_connector_requests_success_total{") and 'task_type="test_sync"' in l
                   and f'operation="{op}"' in l and 'protocol="flyteidl2"' in l for l in lines), op
    stub = s2.AsyncConnectorServiceStub(agent.channel)
    err = rpc_error(stub.CreateTask, c2.CreateTaskRequest())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "template" in err.details()
    err = rpc_error(stub.GetTask, c2.GetTaskRequest(resource_meta=b"{}"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "task_category" in err.details()
    err = rpc_error(stub.CreateTask, create_request(proto1.template("test_async", error="unavailable")))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "Traceback" not in err.details()


def test_connection_secrets_are_per_request_and_never_kept(agent):
    value = "flyte2-conn-value-8c7b6a"
    tmpl = proto1.template("test_async", secret="flyte_conn_only", duration_ms=50)
    stub = s2.AsyncConnectorServiceStub(agent.channel)
    err = rpc_error(stub.CreateTask, create_request(tmpl))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "flyte_conn_only" in err.details()
    conn = connection("test_async", flyte_conn_only=value)
    meta, r = run(agent, create_request(tmpl, conn=conn), conn=conn, delete=False)
    assert r.phase == SUCCEEDED and value.encode() not in meta
    # GetTask and DeleteTask use the connection they carry: without it they cannot authenticate.
    err = rpc_error(stub.GetTask, c2.GetTaskRequest(resource_meta=meta, task_category=category("test_async")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    stub.DeleteTask(c2.DeleteTaskRequest(resource_meta=meta, task_category=category("test_async"), connection=conn))
    # A pod secret is still used when the request does not send that key, and the request's wins when it does.
    pod = proto1.template("test_async", secret="flyte_test_token")
    assert run(agent, create_request(pod, conn=connection("test_async", other_key="unused-value-1234")))[1].phase == SUCCEEDED
    leaky = create_request(proto1.template("test_async", secret="flyte_test_token", error="internal"),
                           conn=connection("test_async", flyte_test_token="request-wins-value-5678"))
    err = rpc_error(stub.CreateTask, leaky)
    assert err.code() == grpc.StatusCode.INTERNAL and err.details() == "unexpected answer for credential [REDACTED]"
    assert value not in agent.logs() and SECRET_VALUE not in agent.logs()


def test_one_binary_serves_flyte1_and_flyte2_at_once(agent):
    """Both generations' clients at the same time on one port, each call checked."""
    def flyte1(i):
        stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
        meta = stub.CreateTask(agent_pb2.CreateTaskRequest(template=proto1.template("test_async", duration_ms=30),
                                                           inputs=proto1.int_inputs(x=i)), timeout=10).resource_meta
        while True:
            r = stub.GetTask(proto1.get_request(meta), timeout=10).resource
            if r.phase in TERMINAL:
                return r.outputs.literals["y"].scalar.primitive.integer

    def flyte1_sync(i):
        r = proto1.execute_sync(agent, proto1.template("test_sync"), test_openai.string_inputs(name=f"v1-{i}"))
        return r.outputs.literals["greeting"].scalar.primitive.string_value

    def flyte2(i):
        _, r = run(agent, create_request(proto1.template("test_async", duration_ms=30), proto1.int_inputs(x=i)))
        return outputs(r)["y"].scalar.primitive.integer

    with futures.ThreadPoolExecutor(12) as pool:
        one = [pool.submit(flyte1, i) for i in range(12)]
        sync = [pool.submit(flyte1_sync, i) for i in range(12)]
        two = [pool.submit(flyte2, i) for i in range(12)]
        assert [f.result() for f in one] == [2 * i for i in range(12)]
        assert [f.result() for f in sync] == [f"hello, v1-{i}" for i in range(12)]
        assert [f.result() for f in two] == [2 * i for i in range(12)]
    text = agent.scrape_metrics()
    for protocol in ("flyteidl", "flyteidl2"):
        assert any(line.startswith("flyte_connector_requests_success_total{") and 'operation="create"' in line
                   and f'protocol="{protocol}"' in line for line in text.splitlines()), protocol


# --- the real agents against their emulators ----------------------------------------------

def test_bigquery_over_flyte2(bigquery):
    from flytekit import StructuredDataset, kwtypes

    agent, emulator = bigquery
    assert connectors(agent) == {"Bigquery Connector": ["bigquery_query_job_task"]}
    task = test_bigquery.bigquery_task(name="bq.flyte2", inputs=kwtypes(version=int),
                                       output_structured_dataset_type=StructuredDataset,
                                       query_template="SELECT * FROM t WHERE v = @version;")
    create = create_request(test_bigquery.serialize(task), test_bigquery.literal_map(task, {"version": 3}),
                            metadata=test_bigquery.metadata("flyte2"))
    meta, r = run(agent, create)
    assert r.phase == SUCCEEDED, r.message
    assert outputs(r)["results"].scalar.structured_dataset.uri.startswith("bq://flyte-test:")
    assert r.log_links[0].name == "BigQuery Console"
    job_id = json.loads(meta)["job_id"]
    job = next(j for j in test_bigquery.emulator_jobs(emulator)["jobs"] if j["job_id"] == job_id)
    params = {p["name"]: p["parameterValue"] for p in job["configuration"]["query"]["queryParameters"]}
    assert params["version"] == {"value": "3"}
    # The same attempt's create, repeated over Flyte 2, finds the job the first one started.
    assert s2.AsyncConnectorServiceStub(agent.channel).CreateTask(create, timeout=10).resource_meta == meta


@pytest.fixture(scope="module")
def databricks():
    ca_file = os.path.join(tempfile.mkdtemp(prefix="dbx-ca-"), "ca.pem")
    e = Emulator("databricks", "--ca-out", ca_file, "--pending-ms", "50", "--running-ms", "150")
    # The pod's token is not one the workspace accepts: only a request's connection can make calls.
    a = Agent(workspace_binary("agent-databricks"), env={
        "FLYTE_DATABRICKS_INSTANCE": e.host, "SSL_CERT_FILE": ca_file,
        "_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN": "dapi-revoked-pod-token"})
    yield a, e, ca_file
    assert a.stop() == 0, a.logs()
    e.stop()


def test_databricks_token_from_the_connection(databricks):
    from flytekitplugins.spark import DatabricksV2

    agent, emulator, ca_file = databricks
    assert connectors(agent) == {"Databricks Connector": ["databricks", "spark"]}
    template = test_databricks.serialize(test_databricks.databricks_task(DatabricksV2, emulator.host))
    # Flyte 1 has only the pod's token, which the workspace refuses.
    stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
    err = rpc_error(stub.CreateTask, agent_pb2.CreateTaskRequest(template=template, output_prefix="s3://b/o/0"), timeout=15)
    assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION), err
    conn = connection("databricks", flyte_databricks_access_token=test_databricks.PAT)
    meta, r = run(agent, create_request(template, conn=conn, metadata=test_databricks.metadata("flyte2")), conn=conn)
    assert r.phase == SUCCEEDED, r.message
    assert r.log_links[0].name == "Databricks Console"
    assert test_databricks.PAT.encode() not in meta
    run_id = json.loads(meta)["run_id"]
    runs = test_databricks.control(emulator, ca_file, "/_emulator/databricks/runs")["runs"]
    assert any(str(x["run_id"]) == run_id for x in runs)


@pytest.fixture(scope="module")
def snowflake():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    e = Emulator("snowflake", "--user", f"{test_snowflake.ACCOUNT.upper()}.FLYTE={test_snowflake.FIXTURES / 'rsa_key.pub'}",
                 "--running-ms", "150")
    # The pod holds a key Snowflake does not know for this user; the right one comes per request.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    a = Agent(workspace_binary("agent-snowflake"), env={"SNOWFLAKE_BASE_URL": e.url, "_FSEC_SNOWFLAKE_PRIVATE_KEY": other})
    yield a, e
    assert a.stop() == 0, a.logs()
    assert "PRIVATE KEY" not in a.logs()
    e.stop()


def test_snowflake_key_from_the_connection_and_both_generations_at_once(snowflake):
    from flytekit import StructuredDataset, kwtypes

    agent, emulator = snowflake
    assert connectors(agent) == {"Snowflake Connector": ["snowflake"]}
    task = test_snowflake.snowflake_task(name="sf.flyte2", inputs=kwtypes(id=int), output_schema_type=StructuredDataset,
                                         query_template="select * from t where id = %(id)s")
    template, values = test_snowflake.serialize(task), test_snowflake.literal_map(task, dict(id=7))
    # flyte-sdk's shape of the same task (Flyte 2): the connection settings in custom, not config.
    sdk_template = type(template)()
    sdk_template.CopyFrom(template)
    sdk_template.custom.update(dict(template.config))
    sdk_template.ClearField("config")
    key = (test_snowflake.FIXTURES / "rsa_key.p8").read_text()
    conn = connection("snowflake", snowflake_private_key=key)

    def flyte1():
        create = agent_pb2.CreateTaskRequest(template=template, inputs=values, output_prefix="s3://b/o/0")
        return agent_pb2_grpc.AsyncAgentServiceStub(agent.channel).CreateTask(create, timeout=15)

    def flyte2():
        return run(agent, create_request(sdk_template, values, conn=conn, metadata=test_snowflake.metadata("flyte2")),
                   conn=conn)

    with futures.ThreadPoolExecutor(2) as pool:
        one, two = pool.submit(flyte1), pool.submit(flyte2)
        # Flyte 1 signs with the pod's key, which Snowflake refuses; Flyte 2 with the request's.
        with pytest.raises(grpc.RpcError) as refused:
            one.result()
        meta, r = two.result()
    assert refused.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                                    grpc.StatusCode.FAILED_PRECONDITION), refused.value
    assert r.phase == SUCCEEDED, r.message
    handle = json.loads(meta)["query_id"]
    assert outputs(r)["results"].scalar.structured_dataset.uri.endswith(f"/{handle}")
    assert b"PRIVATE" not in meta
    # flyte-sdk's link: the account split at its first '-' into organization and account.
    assert r.log_links[0].uri.startswith("https://app.snowflake.com/xy12345/us-east-1/")
    assert r.log_links[0].name == "Snowflake Dashboard" and r.log_links[0].link_type == 1  # DASHBOARD


@pytest.fixture(scope="module")
def openai():
    e = Emulator("openai", "--step-ms", "60")
    a = Agent(workspace_binary("agent-openai"), env={"OPENAI_BASE_URL": f"{e.url}/v1",
                                                      "_FSEC_FLYTE_OPENAI_API_KEY": "sk-pod-key-not-accepted"})
    yield a, e
    assert a.stop() == 0, a.logs()
    e.stop()


def test_chatgpt_sync_agent_through_create_and_get(openai):
    from flytekitplugins.openai import ChatGPTTask

    agent, _ = openai
    assert connectors(agent) == {"ChatGPT Connector": ["chatgpt"], "OpenAI Batch Endpoint Connector": ["openai-batch"]}
    template = test_openai.serialize(ChatGPTTask(name="chat2", chatgpt_config={"model": "gpt-4o-mini", "max_tokens": 50}))
    message = test_openai.string_inputs(message="hello from Flyte 2")
    # The pod's key is refused: Flyte 1's sync call reports the failure.
    r = test_openai.execute_sync(agent, template, message)
    assert r.phase == FAILED and "401" in r.message, r.message
    conn = connection("chatgpt", flyte_openai_api_key=test_openai.KEY)
    create = create_request(template, message, conn=conn)
    # Flyte 2's plugin finds the connection spec in the template's custom and leaves it
    # there; the agent, which refuses settings it does not know, must not see it.
    create.template.custom.update({"secrets": {"flyte_openai_api_key": "openai-key-secret-name"}, "taskType": "chatgpt"})
    meta, r = run(agent, create, conn=conn)
    assert r.phase == SUCCEEDED, r.message
    assert outputs(r)["o0"].scalar.primitive.string_value == "echo: hello from Flyte 2"
    assert test_openai.KEY.encode() not in meta
    # The result travels in the meta: any replica answers the get, with or without the connection.
    again = s2.AsyncConnectorServiceStub(agent.channel).GetTask(c2.GetTaskRequest(resource_meta=meta, task_category=category("chatgpt")))
    assert again.resource == r


def test_openai_batch_over_flyte2(openai):
    from flytekitplugins.openai import BatchEndpointTask

    agent, emulator = openai
    task = BatchEndpointTask(name="batch2", openai_organization="org-flyte2", config={"metadata": {"team": "ml"}})
    values = test_openai.string_inputs(input_file_id="file-abc123")
    # Keys match whatever their case: here the pod layout's upper-case spelling.
    conn = connection("openai-batch", FLYTE_OPENAI_API_KEY=test_openai.KEY)
    create = create_request(test_openai.serialize(task), values, conn=conn, metadata=test_bigquery.metadata("batch2"))
    meta, r = run(agent, create, conn=conn)
    assert r.phase == SUCCEEDED, r.message
    from flyteidl.core import literals_pb2
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine
    from flytekit.models.literals import Literal

    # Back to Flyte 1's Literal, which flytekit reads: the outputs' bytes are the same.
    lit = Literal.from_flyte_idl(v2(outputs(r)["result"], literals_pb2.Literal))
    result = TypeEngine.to_python_value(FlyteContextManager.current_context(), lit, dict)
    assert result["status"] == "completed" and result["input_file_id"] == "file-abc123"
    assert json.loads(meta)["openai_org"] == "org-flyte2"
    state = json.loads(urllib.request.urlopen(f"{emulator.url}/_emulator/openai/state", timeout=5).read())
    batch = next(b for b in state["batches"] if b["id"] == json.loads(meta)["batch_id"])
    assert batch["status"] == "completed"
