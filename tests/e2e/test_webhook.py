"""agent-webhook end to end: WebhookTask templates serialized by flytekit 1.16.31, the
official flyteidl stubs (ExecuteTaskSync as Propeller sends it), the agent binary and the
webhook receiver emulator. flytekit's own WebhookConnector runs on the same template and
inputs against the same receiver: what the two send, and the outputs they answer, must
agree."""

from __future__ import annotations

import asyncio
import json
import pathlib
import tempfile
import urllib.request
from collections import OrderedDict

import msgpack
import pytest
from flyteidl.admin import agent_pb2
from flyteidl.core import literals_pb2
from flyteidl.service import agent_pb2_grpc

from conftest import Agent, Emulator, execute_sync, workspace_binary

SUCCEEDED, FAILED, RETRYABLE_FAILED = 3, 5, 8


@pytest.fixture(scope="module")
def receiver():
    e = Emulator("webhook")
    yield e
    e.stop()


@pytest.fixture(scope="module")
def hook_agent():
    # Loopback is forbidden by default; the receiver listens there.
    config = pathlib.Path(tempfile.mkdtemp(prefix="webhook-")) / "agent.yaml"
    config.write_text('webhook:\n  allow_cidrs: ["127.0.0.1/32"]\n')
    a = Agent(workspace_binary("agent-webhook"), args=("--config", str(config)))
    yield a
    assert a.stop() == 0, a.logs()


@pytest.fixture(scope="module")
def strict_agent():
    a = Agent(workspace_binary("agent-webhook"))
    yield a
    assert a.stop() == 0, a.logs()


def serialize(task):
    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    settings = SerializationSettings(image_config=ImageConfig.auto_default_image(), project="proj", domain="dev", version="v1")
    return get_serializable(OrderedDict(), settings, task).template.to_flyte_idl()


def inputs_of(**values):
    from flytekit.core.context_manager import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine

    ctx = FlyteContextManager.current_context()
    return asyncio.run(TypeEngine.dict_to_literal_map_pb(ctx, values))


def python_connector(template, inputs):
    """flytekit's own WebhookConnector on the same template and inputs."""
    from flytekit.extras.webhook.connector import WebhookConnector
    from flytekit.models.literals import LiteralMap
    from flytekit.models.task import TaskTemplate

    connector = WebhookConnector()
    resource = asyncio.run(connector.do(TaskTemplate.from_flyte_idl(template), output_prefix="s3://b/o/0",
                                        inputs=LiteralMap.from_flyte_idl(inputs)))
    return asyncio.run(resource.to_flyte_idl())


def received(receiver):
    return json.loads(urllib.request.urlopen(f"{receiver.url}/_emulator/webhook/requests", timeout=5).read())


def forget(receiver):
    urllib.request.urlopen(urllib.request.Request(f"{receiver.url}/_emulator/webhook/requests", method="DELETE"), timeout=5)


def info(resource):
    lit = resource.outputs.literals["info"]
    assert lit.scalar.binary.tag == "msgpack", lit
    return msgpack.unpackb(lit.scalar.binary.value)


def compare(receiver, agent, task, inputs):
    """Runs the task on the agent and on flytekit's connector; returns both results after
    checking that the receiver got the same request from each."""
    template = serialize(task)
    forget(receiver)
    ours = execute_sync(agent, template, inputs)
    theirs = python_connector(template, inputs)
    got = received(receiver)
    assert len(got) == 2, got
    a, b = got
    assert (a["method"], a["path"]) == (b["method"], b["path"])
    assert sorted(a["query"].split("&")) == sorted(b["query"].split("&"))
    if a["body"] or b["body"]:
        assert json.loads(a["body"]) == json.loads(b["body"])
    for header in ["content-type", "authorization", "x-flyte-run"]:
        assert a["headers"].get(header) == b["headers"].get(header), header
    assert ours.phase == theirs.phase, (ours.message, theirs.message)
    return ours, theirs


def test_listed_as_the_webhook_connector(hook_agent):
    agents = agent_pb2_grpc.AgentMetadataServiceStub(hook_agent.channel).ListAgents(agent_pb2.ListAgentsRequest()).agents
    assert [(a.name, a.is_sync, [c.name for c in a.supported_task_categories]) for a in agents] == \
        [("Webhook Connector", True, ["webhook"])]


def test_a_post_with_templated_url_headers_and_body_sends_what_flytekit_sends(receiver, hook_agent):
    from flytekit.extras.webhook import WebhookTask

    task = WebhookTask(
        name="notify",
        url=f"{receiver.url}/runs/{{inputs.run_id}}",
        method="POST",
        headers={"Content-Type": "application/json", "X-Flyte-Run": "run-{inputs.run_id}"},
        data={"text": "{inputs.message}", "count": "{inputs.count}", "summary": "{inputs.count} rows, ratio {inputs.ratio}",
              "flags": ["{inputs.ok}", 3], "nested": {"when": "{inputs.when}"}},
        dynamic_inputs={"run_id": str, "message": str, "count": int, "ratio": float, "ok": bool, "when": str},
        show_data=True,
        show_url=True,
    )
    inputs = inputs_of(run_id="r-42", message="done: all good", count=12, ratio=0.25, ok=True, when="2026-12-01")
    ours, theirs = compare(receiver, hook_agent, task, inputs)
    assert ours.phase == SUCCEEDED, ours.message
    assert ours.message == theirs.message == "Webhook was successfully invoked!"
    assert info(ours) == info(theirs)
    assert info(ours)["url"] == f"{receiver.url}/runs/r-42"


def test_a_get_sends_data_as_flytekits_query_parameters(receiver, hook_agent):
    from flytekit.extras.webhook import WebhookTask

    task = WebhookTask(name="poll", url=f"{receiver.url}/items/{{inputs.item}}", method="GET",
                       headers={"Accept": "application/json"}, data={"q": "{inputs.q}", "limit": 5, "exact": True},
                       dynamic_inputs={"item": int, "q": str}, show_url=True)
    ours, theirs = compare(receiver, hook_agent, task, inputs_of(item=10, q="a b&c"))
    assert ours.phase == SUCCEEDED, ours.message
    assert info(ours) == info(theirs)


def test_a_status_other_than_200_fails_as_flytekit_reports_it(receiver, hook_agent):
    from flytekit.extras.webhook import WebhookTask

    task = WebhookTask(name="missing", url=f"{receiver.url}/status/404", method="POST", data={"a": 1})
    ours, theirs = compare(receiver, hook_agent, task, inputs_of())
    assert ours.phase == FAILED
    assert ours.message == theirs.message == "Webhook failed with status code 404, response: status 404"
    # Beyond flytekit: a server error may pass, so Propeller tries again.
    task = WebhookTask(name="down", url=f"{receiver.url}/status/503", method="POST", data={"a": 1})
    forget(receiver)
    r = execute_sync(hook_agent, serialize(task), inputs_of())
    assert r.phase == RETRYABLE_FAILED and "status code 503" in r.message


def test_the_default_rules_keep_webhooks_off_loopback_and_metadata(receiver, strict_agent):
    import grpc
    from flytekit.extras.webhook import WebhookTask

    forget(receiver)
    for url in [f"{receiver.url}/hook", "http://169.254.169.254/latest/meta-data/", "http://metadata.google.internal/"]:
        task = WebhookTask(name="probe", url=url, method="GET")
        with pytest.raises(grpc.RpcError) as err:
            execute_sync(strict_agent, serialize(task), inputs_of())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not call" in err.value.details()
    assert received(receiver) == []
