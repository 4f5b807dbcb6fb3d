"""agent-openai end to end: ChatGPTTask and BatchEndpointTask templates from
flytekitplugins-openai, the official flyteidl stubs (ExecuteTaskSync in Propeller's message
sequence), the agent binary and the OpenAI emulator binary."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import OrderedDict

import grpc
import pytest
from flyteidl.admin import agent_pb2
from flyteidl.core import identifier_pb2, literals_pb2
from flyteidl.service import agent_pb2_grpc

from conftest import Agent, Emulator, execute_sync, workspace_binary

KEY = "sk-emulator-key"
SUCCEEDED, FAILED, RETRYABLE_FAILED = 3, 5, 8


@pytest.fixture(scope="module")
def emulator():
    e = Emulator("openai", "--step-ms", "60")
    yield e
    e.stop()


@pytest.fixture(scope="module")
def oai_agent(emulator):
    a = Agent(workspace_binary("agent-openai"), env={"OPENAI_BASE_URL": f"{emulator.url}/v1", "_FSEC_FLYTE_OPENAI_API_KEY": KEY})
    yield a
    assert a.stop() == 0, a.logs()
    assert KEY not in a.logs()


def serialize(task):
    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    settings = SerializationSettings(image_config=ImageConfig.auto_default_image(), project="proj", domain="dev", version="v1")
    return get_serializable(OrderedDict(), settings, task).template.to_flyte_idl()


def string_inputs(**values):
    return literals_pb2.LiteralMap(literals={k: literals_pb2.Literal(scalar=literals_pb2.Scalar(
        primitive=literals_pb2.Primitive(string_value=v))) for k, v in values.items()})


def test_both_agents_are_listed(oai_agent):
    agents = {a.name: a for a in agent_pb2_grpc.AgentMetadataServiceStub(oai_agent.channel).ListAgents(agent_pb2.ListAgentsRequest()).agents}
    assert agents["ChatGPT Connector"].is_sync and [c.name for c in agents["ChatGPT Connector"].supported_task_categories] == ["chatgpt"]
    assert not agents["OpenAI Batch Endpoint Connector"].is_sync


def test_chatgpt_task(oai_agent, emulator):
    from flytekitplugins.openai import ChatGPTTask

    task = ChatGPTTask(name="chat", openai_organization="org-flyte",
                       chatgpt_config={"model": "gpt-4o-mini", "temperature": 0.7, "max_tokens": 100})
    r = execute_sync(oai_agent, serialize(task), string_inputs(message="Test ChatGPT Plugin"))
    assert r.phase == SUCCEEDED, r.message
    assert r.outputs.literals["o0"].scalar.primitive.string_value == "echo: Test ChatGPT Plugin"
    state = json.loads(urllib.request.urlopen(f"{emulator.url}/_emulator/openai/state", timeout=5).read())
    assert "org-flyte" in state["organizations"]
    bad = ChatGPTTask(name="chat.bad", chatgpt_config={"model": "no-such-model"})
    r = execute_sync(oai_agent, serialize(bad), string_inputs(message="x"))
    assert r.phase == FAILED and "no-such-model" in r.message


def test_batch_task_result_is_flytekits_dict(oai_agent):
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine
    from flytekit.models.literals import Literal
    from flytekitplugins.openai import BatchEndpointTask

    task = BatchEndpointTask(name="batch", openai_organization="org-flyte", config={"metadata": {"team": "ml"}})
    template = serialize(task)
    stub = agent_pb2_grpc.AsyncAgentServiceStub(oai_agent.channel)
    md = agent_pb2.TaskExecutionMetadata(task_execution_id=identifier_pb2.TaskExecutionIdentifier(
        node_execution_id=identifier_pb2.NodeExecutionIdentifier(node_id="n0",
                                                                 execution_id=identifier_pb2.WorkflowExecutionIdentifier(name="batch-e2e"))))
    create = agent_pb2.CreateTaskRequest(template=template, inputs=string_inputs(input_file_id="file-abc123"), task_execution_metadata=md)
    metas = {stub.CreateTask(create, timeout=10).resource_meta for _ in range(2)}
    assert len(metas) == 1, "a repeated create adopts the batch"
    meta = metas.pop()
    assert json.loads(meta)["openai_org"] == "org-flyte"
    category = agent_pb2.TaskCategory(name="openai-batch", version=0)
    for _ in range(100):
        r = stub.GetTask(agent_pb2.GetTaskRequest(task_type="openai-batch", resource_meta=meta, task_category=category), timeout=10).resource
        if r.phase in (SUCCEEDED, FAILED):
            break
        time.sleep(0.05)
    assert r.phase == SUCCEEDED, r.message
    lit = Literal.from_flyte_idl(r.outputs.literals["result"])
    batch = TypeEngine.to_python_value(FlyteContextManager.current_context(), lit, dict)
    assert batch["status"] == "completed" and batch["input_file_id"] == "file-abc123"
    assert batch["metadata"]["team"] == "ml"
    stub.DeleteTask(agent_pb2.DeleteTaskRequest(task_type="openai-batch", resource_meta=meta, task_category=category), timeout=10)


def test_python_pickled_meta_is_refused_clearly(oai_agent):
    import cloudpickle
    from flytekitplugins.openai.batch.connector import BatchEndpointMetadata

    pickled = BatchEndpointMetadata(openai_org="org", batch_id="batch_abc123").encode()
    assert pickled == cloudpickle.dumps(BatchEndpointMetadata(openai_org="org", batch_id="batch_abc123"))
    with pytest.raises(grpc.RpcError) as e:
        agent_pb2_grpc.AsyncAgentServiceStub(oai_agent.channel).GetTask(agent_pb2.GetTaskRequest(
            task_type="openai-batch", resource_meta=pickled, task_category=agent_pb2.TaskCategory(name="openai-batch")), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pickled" in e.value.details()


def test_a_rate_limited_service_as_propeller_meets_it():
    """ChatGPT tasks sent at once, as Propeller's sync path does, to a service allowing 20
    requests a second: every task succeeds within its deadline, each is one accepted
    completion, and the agent's metrics show the limit it learnt and the 429s it saw."""
    import concurrent.futures
    import re

    from flytekitplugins.openai import ChatGPTTask

    emulator = Emulator("openai", "--rate-limit", "20", "--burst", "5", "--latency-ms", "50")
    agent = Agent(workspace_binary("agent-openai"),
                  env={"OPENAI_BASE_URL": f"{emulator.url}/v1", "_FSEC_FLYTE_OPENAI_API_KEY": KEY})
    try:
        template = serialize(ChatGPTTask(name="chat.limited", chatgpt_config={"model": "gpt-4o-mini"}))
        with concurrent.futures.ThreadPoolExecutor(max_workers=60) as pool:
            results = list(pool.map(lambda i: execute_sync(agent, template, string_inputs(message=f"m{i}")), range(60)))
        assert [r.phase for r in results] == [SUCCEEDED] * 60, [r.message for r in results if r.phase != SUCCEEDED][:3]
        stats = json.loads(urllib.request.urlopen(f"{emulator.url}/_emulator/stats", timeout=5).read())
        assert stats["rate_limited"] > 0 and stats["requests"] - stats["rate_limited"] == 60, stats
        metrics = agent.scrape_metrics()
        labels = f'agent="openai",endpoint="{emulator.host}"'

        def value(name):
            m = re.search(rf'^{name}{{([^}}]*)}} (\S+)$', metrics, re.M)
            assert m and all(part in m.group(1) for part in labels.split(",")), (name, metrics)
            return float(m.group(2))

        assert value("flyte_agent_service_throttled_total") > 0
        assert value("flyte_agent_service_concurrency_limit") < 256, "the limit came down from its start"
        assert value("flyte_agent_service_calls_in_flight") == 0
        assert value("flyte_agent_service_calls_waiting") == 0
    finally:
        assert agent.stop() == 0, agent.logs()
        emulator.stop()
