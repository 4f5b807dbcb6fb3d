"""agent-snowflake end to end: templates from flytekitplugins-snowflake's SnowflakeTask, the
official flyteidl stubs, the agent binary, and the Snowflake SQL API emulator binary, which
verifies the agent's key-pair JWT with the registered public key."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import OrderedDict

import grpc
import pytest
from flyteidl.admin import agent_pb2
from flyteidl.core import identifier_pb2
from flyteidl.service import agent_pb2_grpc

from conftest import ROOT, Agent, Emulator, workspace_binary

FIXTURES = ROOT / "crates/agent-snowflake/tests/fixtures"
ACCOUNT = "xy12345-us-east-1"
SUCCEEDED, FAILED = 3, 5


@pytest.fixture(scope="module")
def emulator():
    e = Emulator("snowflake", "--user", f"{ACCOUNT.upper()}.FLYTE={FIXTURES / 'rsa_key.pub'}", "--running-ms", "150")
    yield e
    e.stop()


@pytest.fixture(scope="module")
def sf_agent(emulator):
    key = (FIXTURES / "rsa_key.p8").read_text()
    a = Agent(workspace_binary("agent-snowflake"), env={"SNOWFLAKE_BASE_URL": emulator.url, "_FSEC_SNOWFLAKE_PRIVATE_KEY": key})
    yield a
    assert a.stop() == 0, a.logs()
    assert "PRIVATE KEY" not in a.logs()


def statements(emulator):
    return json.loads(urllib.request.urlopen(f"{emulator.url}/_emulator/snowflake/statements", timeout=5).read())


def snowflake_task(**kwargs):
    from flytekitplugins.snowflake import SnowflakeConfig, SnowflakeTask

    config = SnowflakeConfig(user="flyte", account=ACCOUNT, database="DB", schema="PUBLIC", warehouse="WH")
    return SnowflakeTask(task_config=config, **kwargs)


def serialize(task):
    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    settings = SerializationSettings(image_config=ImageConfig.auto_default_image(), project="proj", domain="dev", version="v1")
    return get_serializable(OrderedDict(), settings, task).template.to_flyte_idl()


def literal_map(task, values):
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine

    return TypeEngine.dict_to_literal_map(FlyteContextManager.current_context(), values, task.python_interface.inputs).to_flyte_idl()


def metadata(execution):
    return agent_pb2.TaskExecutionMetadata(task_execution_id=identifier_pb2.TaskExecutionIdentifier(
        task_id=identifier_pb2.Identifier(resource_type=identifier_pb2.TASK, project="proj", domain="dev", name="sf", version="v1"),
        node_execution_id=identifier_pb2.NodeExecutionIdentifier(
            node_id="n0", execution_id=identifier_pb2.WorkflowExecutionIdentifier(project="proj", domain="dev", name=execution))))


def run_to_end(agent, create):
    stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
    meta = stub.CreateTask(create, timeout=10).resource_meta
    category = agent_pb2.TaskCategory(name="snowflake", version=0)
    for _ in range(200):
        r = stub.GetTask(agent_pb2.GetTaskRequest(task_type="snowflake", resource_meta=meta, task_category=category), timeout=10).resource
        if r.phase in (SUCCEEDED, FAILED, 4, 8):
            stub.DeleteTask(agent_pb2.DeleteTaskRequest(task_type="snowflake", resource_meta=meta, task_category=category), timeout=10)
            return meta, r
        time.sleep(0.05)
    raise AssertionError("statement did not finish")


def test_with_inputs_and_output(sf_agent, emulator):
    from flytekit import StructuredDataset, kwtypes

    task = snowflake_task(name="sf.io", inputs=kwtypes(id=int, name=str, ratio=float, flag=bool),
                          output_schema_type=StructuredDataset,
                          query_template="select * from t where id = %(id)s and name = %(name)s and r > %(ratio)s and f = %(flag)s")
    create = agent_pb2.CreateTaskRequest(template=serialize(task), inputs=literal_map(task, dict(id=7, name="O'Brien", ratio=0.5, flag=True)),
                                         output_prefix="s3://b/o/0", task_execution_metadata=metadata("io"))
    meta, r = run_to_end(sf_agent, create)
    assert r.phase == SUCCEEDED, r.message
    handle = json.loads(meta)["query_id"]
    assert r.outputs.literals["results"].scalar.structured_dataset.uri == f"snowflake://flyte:{ACCOUNT}/WH/DB/PUBLIC/{handle}"
    assert r.log_links[0].uri == f"https://app.snowflake.com/us-east-1/xy12345/#/compute/history/queries/{handle}/detail"
    stmt = next(s for s in statements(emulator)["statements"] if s["handle"] == handle)
    assert stmt["request"]["statement"] == "select * from t where id = ? and name = ? and r > ? and f = ?"
    assert [stmt["request"]["bindings"][str(i)]["type"] for i in range(1, 5)] == ["FIXED", "TEXT", "REAL", "BOOLEAN"]
    assert stmt["request"]["bindings"]["2"]["value"] == "O'Brien"


def test_without_inputs_or_outputs_and_python_metas(sf_agent, emulator):
    from flytekitplugins.snowflake.connector import SnowflakeJobMetadata

    task = snowflake_task(name="sf.plain", query_template="select 1")
    meta, r = run_to_end(sf_agent, agent_pb2.CreateTaskRequest(template=serialize(task), output_prefix="s3://b/o/0"))
    assert r.phase == SUCCEEDED and "results" not in r.outputs.literals
    m = json.loads(meta)
    py = SnowflakeJobMetadata(user=m["user"], account=m["account"], database=m["database"], schema=m["schema"],
                              warehouse=m["warehouse"], query_id=m["query_id"], has_output=False).encode()
    stub = agent_pb2_grpc.AsyncAgentServiceStub(sf_agent.channel)
    r = stub.GetTask(agent_pb2.GetTaskRequest(task_type="snowflake", resource_meta=py,
                                              task_category=agent_pb2.TaskCategory(name="snowflake")), timeout=10).resource
    assert r.phase == SUCCEEDED


def test_repeated_create_is_one_statement(sf_agent, emulator):
    task = snowflake_task(name="sf.once", query_template="select 2")
    create = agent_pb2.CreateTaskRequest(template=serialize(task), output_prefix="s3://b/o/0", task_execution_metadata=metadata("once"))
    stub = agent_pb2_grpc.AsyncAgentServiceStub(sf_agent.channel)
    before = len(statements(emulator)["statements"])
    assert len({stub.CreateTask(create, timeout=10).resource_meta for _ in range(3)}) == 1
    assert len(statements(emulator)["statements"]) == before + 1


def test_placeholder_without_input_is_invalid(sf_agent):
    from flytekit import kwtypes

    task = snowflake_task(name="sf.bad", inputs=kwtypes(id=int), query_template="select %(idd)s")
    with pytest.raises(grpc.RpcError) as e:
        agent_pb2_grpc.AsyncAgentServiceStub(sf_agent.channel).CreateTask(
            agent_pb2.CreateTaskRequest(template=serialize(task), inputs=literal_map(task, dict(id=1))), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "%(idd)s" in e.value.details()
