"""Traces and metrics as an operator's collector and Prometheus see them: agent binaries
export OTLP to the collector emulator (`emulators otlp`); one ExecuteTaskSync call that
carries a caller's `traceparent` must come back as a SERVER span and the webhook request as
a CLIENT span of the same trace, with the trace context sent on to the service; health
checks are not traced; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES name the resource; JSON
log lines carry the ids. `/metrics` has the process metrics, latency histograms and the
in-flight gauge."""

from __future__ import annotations

import json
import pathlib
import re
import secrets
import tempfile
import time
import urllib.request

import pytest
from flyteidl.admin import agent_pb2
from flyteidl.service import agent_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import Agent, Emulator, execute_sync, workspace_binary
from test_webhook import inputs_of, receiver, received, serialize  # noqa: F401 (receiver: the fixture)

SUCCEEDED = 3


@pytest.fixture(scope="module")
def collector():
    e = Emulator("otlp")
    yield e
    e.stop()


@pytest.fixture(scope="module")
def traced_agent(collector):
    config = pathlib.Path(tempfile.mkdtemp(prefix="traced-")) / "agent.yaml"
    config.write_text('log_format: json\nwebhook:\n  allow_cidrs: ["127.0.0.1/32"]\n  send_trace_context: true\n')
    a = Agent(workspace_binary("agent-webhook"), args=("--config", str(config)), env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_SERVICE_NAME": "webhook-agents",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=e2e,k8s.namespace.name=flyte",
        # Export within a fraction of a second instead of the default 5 s.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    })
    yield a
    assert a.stop() == 0, a.logs()


def spans(collector, trace_id=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = json.loads(urllib.request.urlopen(f"{collector.url}/_emulator/otlp/spans", timeout=5).read())
        mine = [s for s in got if trace_id is None or s["trace_id"] == trace_id]
        if (trace_id is None or len(mine) >= 2) or time.monotonic() > deadline:
            return mine
        time.sleep(0.1)


def test_one_call_is_one_trace_from_the_caller_through_the_agent_to_the_service(collector, receiver, traced_agent):
    from flytekit.extras.webhook import WebhookTask

    task = WebhookTask(name="traced", url=f"{receiver.url}/hooks/{{inputs.n}}", method="POST",
                       data={"n": "{inputs.n}"}, dynamic_inputs={"n": int})
    template = serialize(task)
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    for _ in range(3):
        health_pb2_grpc.HealthStub(traced_agent.channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)

    resource = execute_sync(traced_agent, template, inputs_of(n=7), metadata=[("traceparent", f"00-{trace_id}-{caller_span}-01")])
    assert resource.phase == SUCCEEDED, resource.message

    trace = spans(collector, trace_id)
    by_kind = {s["kind"]: s for s in trace}
    assert set(by_kind) == {"SERVER", "CLIENT"}, trace
    server, client = by_kind["SERVER"], by_kind["CLIENT"]
    # The SERVER span continues the caller's trace; the CLIENT span is its child.
    assert server["parent_span_id"] == caller_span
    assert client["parent_span_id"] == server["span_id"]
    assert server["name"] == "flyteidl.service.SyncAgentService/ExecuteTaskSync"
    assert server["attributes"]["rpc.system"] == "grpc"
    assert server["attributes"]["rpc.service"] == "flyteidl.service.SyncAgentService"
    assert server["attributes"]["rpc.method"] == "ExecuteTaskSync"
    assert server["attributes"]["rpc.grpc.status_code"] == 0
    assert server["status"] != "ERROR"
    assert client["attributes"]["http.request.method"] == "POST"
    assert client["attributes"]["http.response.status_code"] == 200
    assert client["attributes"]["server.address"] == "127.0.0.1"
    assert client["attributes"]["server.port"] == int(receiver.host.rsplit(":", 1)[1])
    # A webhook's path can be its credential: the span names the host only.
    assert client["attributes"]["url.full"] == f"http://{receiver.host}"
    for s in (server, client):
        assert s["resource"]["service.name"] == "webhook-agents"
        assert s["resource"]["deployment.environment"] == "e2e"
        assert s["resource"]["k8s.namespace.name"] == "flyte"
    # The service got the trace context of the CLIENT span (webhook.send_trace_context).
    sent = [r for r in received(receiver) if r["path"] == "/hooks/7"]
    assert sent and sent[-1]["headers"]["traceparent"] == f"00-{trace_id}-{client['span_id']}-01"
    # Health checks leave no spans.
    assert not [s for s in spans(collector) if "Health" in s["name"]]
    # JSON log lines written inside the call carry its ids.
    lines = [json.loads(line) for line in traced_agent.logs().splitlines() if line.startswith("{")]
    assert lines, traced_agent.logs()
    for line in lines:
        if "trace_id" in line:
            assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"]) and re.fullmatch(r"[0-9a-f]{16}", line["span_id"])


def test_an_error_status_is_recorded_on_the_server_span(collector, traced_agent):
    trace_id = secrets.token_hex(16)
    stub = agent_pb2_grpc.AsyncAgentServiceStub(traced_agent.channel)
    with pytest.raises(Exception):
        # The webhook agent is sync: GetTask on it names an unknown task type.
        stub.GetTask(agent_pb2.GetTaskRequest(task_category=agent_pb2.TaskCategory(name="no-such-type"), resource_meta=b"{}"),
                     timeout=5, metadata=[("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")])
    server = [s for s in spans(collector, trace_id, timeout=3) if s["kind"] == "SERVER"]
    assert server, spans(collector)
    code = server[0]["attributes"]["rpc.grpc.status_code"]
    assert code not in (0, None), server[0]


def test_metrics_have_process_histograms_and_calls_in_flight(traced_agent):
    text = traced_agent.scrape_metrics()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds", "process_virtual_memory_bytes", "process_max_fds"):
        assert re.search(rf"^{name} [0-9.e+]+$", text, re.M), (name, text)
    start = float(re.search(r"^process_start_time_seconds ([0-9.e+]+)$", text, re.M).group(1))
    assert abs(start - time.time()) < 600
    # Latency is a histogram (buckets add up across replicas), not a summary.
    assert re.search(r"^# TYPE flyte_connector_request_latency_seconds histogram$", text, re.M), text
    assert re.search(r'^flyte_connector_request_latency_seconds_bucket\{.*le="0.005".*\} \d+$', text, re.M), text
    assert re.search(r'^flyte_connector_request_latency_seconds_bucket\{.*le="\+Inf".*\} \d+$', text, re.M), text
    assert "quantile=" not in text
    # Nothing in flight between calls (the scrape is not a gRPC call).
    assert re.search(r"^flyte_agent_requests_in_flight 0$", text, re.M), text


def test_the_shared_rest_client_traces_every_request_of_an_async_agent(collector):
    """agent-databricks sends through agent-core's REST client: a CreateTask with a caller's
    trace context yields a SERVER span and CLIENT spans (the run submit) of that trace."""
    import os

    from flytekitplugins.spark import DatabricksV2
    from test_databricks import PAT, databricks_task, metadata
    from test_databricks import serialize as serialize_task

    ca = os.path.join(tempfile.mkdtemp(prefix="dbx-ca-"), "ca.pem")
    dbx = Emulator("databricks", "--ca-out", ca)
    agent = Agent(workspace_binary("agent-databricks"), env={
        "FLYTE_DATABRICKS_INSTANCE": dbx.host, "SSL_CERT_FILE": ca, "_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN": PAT,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        template = serialize_task(databricks_task(DatabricksV2, dbx.host))
        trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
        stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
        create = agent_pb2.CreateTaskRequest(template=template, output_prefix="s3://b/o/0",
                                             task_execution_metadata=metadata("traced"))
        stub.CreateTask(create, timeout=10, metadata=[("traceparent", f"00-{trace_id}-{caller_span}-01")])
        trace = spans(collector, trace_id)
        server = [s for s in trace if s["kind"] == "SERVER"]
        clients = [s for s in trace if s["kind"] == "CLIENT"]
        assert len(server) == 1 and server[0]["attributes"]["rpc.method"] == "CreateTask", trace
        assert clients and all(c["parent_span_id"] == server[0]["span_id"] for c in clients), trace
        assert any(c["attributes"]["url.full"].endswith("/api/2.1/jobs/runs/submit") for c in clients), clients
        # Without OTEL_SERVICE_NAME the binary names the service.
        assert server[0]["resource"]["service.name"] == "agent-databricks"
    finally:
        assert agent.stop() == 0, agent.logs()
        dbx.stop()
