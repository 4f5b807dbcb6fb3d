"""The agent server, driven by the official flyteidl Python stubs exactly as Propeller
drives it: discovery, async create/get/delete, sync execute, metrics, logs, errors,
health, reflection, Prometheus metrics, traces and shutdown."""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import threading
import time
import urllib.request
from concurrent import futures
from dataclasses import dataclass
from typing import Optional

import grpc
import pytest
from flyteidl.admin import agent_pb2
from flyteidl.core import identifier_pb2, literals_pb2, tasks_pb2
from flyteidl.service import agent_pb2_grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import SECRET_VALUE, Agent, agent_binary

PHASE = {"QUEUED": 1, "RUNNING": 2, "SUCCEEDED": 3, "ABORTED": 4, "FAILED": 5, "RETRYABLE_FAILED": 8}


def template(task_type: str, **custom) -> tasks_pb2.TaskTemplate:
    s = struct_pb2.Struct()
    s.update(custom)
    return tasks_pb2.TaskTemplate(
        id=identifier_pb2.Identifier(resource_type=identifier_pb2.TASK, project="p", domain="d", name="t", version="v1"),
        type=task_type, custom=s)


def int_inputs(**values) -> literals_pb2.LiteralMap:
    return literals_pb2.LiteralMap(literals={
        k: literals_pb2.Literal(scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(integer=v)))
        for k, v in values.items()})


def metadata(retry: int = 0) -> agent_pb2.TaskExecutionMetadata:
    return agent_pb2.TaskExecutionMetadata(
        task_execution_id=identifier_pb2.TaskExecutionIdentifier(
            task_id=identifier_pb2.Identifier(resource_type=identifier_pb2.TASK, project="p", domain="d", name="t", version="v1"),
            node_execution_id=identifier_pb2.NodeExecutionIdentifier(
                node_id="n0", execution_id=identifier_pb2.WorkflowExecutionIdentifier(project="p", domain="d", name="exec-1")),
            retry_attempt=retry),
        namespace="p-d")


def category(name: str) -> agent_pb2.TaskCategory:
    return agent_pb2.TaskCategory(name=name, version=0)


def get_request(meta: bytes, task_type: str = "test_async") -> agent_pb2.GetTaskRequest:
    # Propeller fills both the deprecated task_type and task_category.
    return agent_pb2.GetTaskRequest(task_type=task_type, resource_meta=meta, task_category=category(task_type),
                                    output_prefix="s3://bucket/out/0")


def sync_requests(tmpl, inputs):
    """Propeller's sequence: header, then inputs, then half-close (the generator ends)."""
    yield agent_pb2.ExecuteTaskSyncRequest(header=agent_pb2.CreateRequestHeader(
        template=tmpl, output_prefix="s3://bucket/out/0", task_execution_metadata=metadata()))
    yield agent_pb2.ExecuteTaskSyncRequest(inputs=inputs)


def execute_sync(agent: Agent, tmpl, inputs, timeout=10):
    responses = list(agent_pb2_grpc.SyncAgentServiceStub(agent.channel).ExecuteTaskSync(
        sync_requests(tmpl, inputs), timeout=timeout))
    assert len(responses) == 1, f"exactly one response, got {len(responses)}"
    assert responses[0].WhichOneof("res") == "header"
    return responses[0].header.resource


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, **kwargs)
    return e.value


def test_health_is_serving_for_the_server_and_each_service(agent):
    stub = health_pb2_grpc.HealthStub(agent.channel)
    for svc in ["", "flyteidl.service.AsyncAgentService", "flyteidl.service.SyncAgentService",
                "flyteidl.service.AgentMetadataService", "flyteidl2.connector.AsyncConnectorService",
                "flyteidl2.connector.ConnectorMetadataService"]:
        assert stub.Check(health_pb2.HealthCheckRequest(service=svc)).status == health_pb2.HealthCheckResponse.SERVING


def test_the_process_runs_without_transparent_huge_pages(agent):
    # 2 MiB pages make memory resident that a few calls in flight touched (see server.rs).
    status = pathlib.Path(f"/proc/{agent.proc.pid}/status").read_text()
    if "THP_enabled:" not in status:
        pytest.skip("this kernel does not report THP_enabled")
    assert "THP_enabled:\t0" in status


def test_reflection_lets_grpcurl_list_describe_and_call(agent):
    out = subprocess.run(["grpcurl", "-plaintext", agent.address, "list"], capture_output=True, text=True, check=True).stdout
    for svc in ["flyteidl.service.AsyncAgentService", "flyteidl.service.SyncAgentService",
                "flyteidl.service.AgentMetadataService", "flyteidl2.connector.AsyncConnectorService",
                "flyteidl2.connector.ConnectorMetadataService", "grpc.health.v1.Health"]:
        assert svc in out.split(), out
    # Flyte 2's types are described from the same descriptor set.
    described2 = subprocess.run(["grpcurl", "-plaintext", agent.address, "describe", "flyteidl2.core.Connection"],
                                capture_output=True, text=True, check=True).stdout
    assert "map<string, string> secrets = 2" in described2
    described = subprocess.run(["grpcurl", "-plaintext", agent.address, "describe", "flyteidl.admin.Resource"],
                               capture_output=True, text=True, check=True).stdout
    assert "agent_error = 7" in described and "phase = 5" in described
    called = subprocess.run(["grpcurl", "-plaintext", "-d", "{}", agent.address,
                             "flyteidl.service.AgentMetadataService/ListAgents"],
                            capture_output=True, text=True, check=True).stdout
    assert json.loads(called)["agents"][0]["name"] == "Test Async Agent"


def test_list_agents_and_get_agent(agent):
    stub = agent_pb2_grpc.AgentMetadataServiceStub(agent.channel)
    agents = {a.name: a for a in stub.ListAgents(agent_pb2.ListAgentsRequest()).agents}
    assert set(agents) == {"Test Async Agent", "Test Sync Agent"}
    a, s = agents["Test Async Agent"], agents["Test Sync Agent"]
    assert (a.is_sync, list(a.supported_task_types), [(c.name, c.version) for c in a.supported_task_categories]) == \
        (False, ["test_async"], [("test_async", 0)])
    assert s.is_sync and list(s.supported_task_types) == ["test_sync"]
    assert stub.GetAgent(agent_pb2.GetAgentRequest(name="Test Sync Agent")).agent.is_sync
    err = rpc_error(stub.GetAgent, agent_pb2.GetAgentRequest(name="Nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_async_create_get_delete(agent):
    stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
    create = agent_pb2.CreateTaskRequest(inputs=int_inputs(x=21), template=template("test_async", duration_ms=300),
                                         output_prefix="s3://bucket/out/0", task_execution_metadata=metadata())
    meta = stub.CreateTask(create, timeout=10).resource_meta
    # Propeller may repeat a create for the same attempt: same job id.
    assert json.loads(stub.CreateTask(create, timeout=10).resource_meta)["job_id"] == json.loads(meta)["job_id"]
    phases = []
    while True:
        r = stub.GetTask(get_request(meta), timeout=10).resource
        phases.append(r.phase)
        if r.phase in (PHASE["SUCCEEDED"], PHASE["FAILED"], PHASE["RETRYABLE_FAILED"]):
            break
        time.sleep(0.05)
    assert phases[0] == PHASE["RUNNING"] and phases[-1] == PHASE["SUCCEEDED"]
    assert r.outputs.literals["y"].scalar.primitive.integer == 42
    assert r.log_links[0].name == "Test Console"
    assert r.custom_info.fields["job_id"].string_value == json.loads(meta)["job_id"]
    stub.DeleteTask(agent_pb2.DeleteTaskRequest(task_type="test_async", resource_meta=meta,
                                                task_category=category("test_async")))
    stub.DeleteTask(agent_pb2.DeleteTaskRequest(task_type="test_async", resource_meta=meta,
                                                task_category=category("test_async")))


def test_failed_jobs_are_phases_not_errors(agent):
    stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
    for outcome, phase in [("fail", "FAILED"), ("retryable", "RETRYABLE_FAILED")]:
        meta = stub.CreateTask(agent_pb2.CreateTaskRequest(template=template("test_async", outcome=outcome))).resource_meta
        r = stub.GetTask(get_request(meta)).resource
        assert r.phase == PHASE[phase] and r.message


def test_flytekit_resource_meta_encode_is_accepted(agent):
    from flytekit.extend.backend.base_connector import ResourceMeta

    @dataclass
    class TestMeta(ResourceMeta):
        job_id: str
        started_at_ms: int
        duration_ms: int = 0
        outcome: Optional[str] = None

    encoded = TestMeta(job_id="written-by-python", started_at_ms=0).encode()
    assert b'", "' in encoded and b'": null' in encoded  # Python's separators and None
    r = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel).GetTask(get_request(encoded)).resource
    assert r.phase == PHASE["SUCCEEDED"]
    assert r.custom_info.fields["job_id"].string_value == "written-by-python"


def test_execute_task_sync_follows_propellers_sequence(agent):
    inputs = literals_pb2.LiteralMap(literals={"name": literals_pb2.Literal(scalar=literals_pb2.Scalar(
        primitive=literals_pb2.Primitive(string_value="flyte")))})
    r = execute_sync(agent, template("test_sync"), inputs)
    assert r.phase == PHASE["SUCCEEDED"]
    assert r.outputs.literals["greeting"].scalar.primitive.string_value == "hello, flyte"
    assert r.outputs.literals["name"].scalar.primitive.string_value == "flyte"
    r = execute_sync(agent, template("test_sync", outcome="pending"), inputs)
    assert r.phase == PHASE["RETRYABLE_FAILED"], "a non-terminal sync answer must not leave the task hanging"


def test_metrics_and_streamed_logs(agent):
    stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
    meta = stub.CreateTask(agent_pb2.CreateTaskRequest(template=template("test_async"))).resource_meta
    m = stub.GetTaskMetrics(agent_pb2.GetTaskMetricsRequest(task_type="test_async", resource_meta=meta,
                                                            task_category=category("test_async")))
    assert m.results[0].metric == "EXECUTION_METRIC_USED_CPU_AVG"
    parts = list(stub.GetTaskLogs(agent_pb2.GetTaskLogsRequest(task_type="test_async", resource_meta=meta, lines=250,
                                                               task_category=category("test_async"))))
    assert parts[0].WhichOneof("part") == "header" and parts[0].header.token == "1"
    bodies = [p.body for p in parts[1:]]
    assert all(p.WhichOneof("part") == "body" for p in parts[1:]) and len(bodies) >= 3
    lines = [l.message for b in bodies for l in b.structured_lines]
    assert len(lines) == 250 and lines[-1].endswith("line 249\n")


def test_errors_have_precise_codes_and_clean_messages(agent):
    stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
    cases = [
        (agent_pb2.CreateTaskRequest(template=template("no_such_type")), grpc.StatusCode.NOT_FOUND, "no_such_type_v0"),
        (agent_pb2.CreateTaskRequest(template=template("test_async", error="invalid")), grpc.StatusCode.INVALID_ARGUMENT, "template.custom"),
        (agent_pb2.CreateTaskRequest(template=template("test_async", bogus=1)), grpc.StatusCode.INVALID_ARGUMENT, "bogus"),
        (agent_pb2.CreateTaskRequest(template=template("test_async"), inputs=literals_pb2.LiteralMap(literals={
            "x": literals_pb2.Literal(scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(string_value="ten")))})),
         grpc.StatusCode.INVALID_ARGUMENT, "inputs.x: expected integer, got string"),
        (agent_pb2.CreateTaskRequest(), grpc.StatusCode.INVALID_ARGUMENT, "template is missing"),
        (agent_pb2.CreateTaskRequest(template=template("test_async", secret="flyte_absent_key")), grpc.StatusCode.FAILED_PRECONDITION,
         "_FSEC_FLYTE_ABSENT_KEY"),
        (agent_pb2.CreateTaskRequest(template=template("test_async", error="unavailable")), grpc.StatusCode.UNAVAILABLE, "unavailable"),
        (agent_pb2.CreateTaskRequest(template=template("test_async", secret="flyte_test_token", error="internal")),
         grpc.StatusCode.INTERNAL, "[REDACTED]"),
    ]
    for req, code, needle in cases:
        err = rpc_error(stub.CreateTask, req)
        assert err.code() == code, (req, err)
        assert needle in err.details(), err.details()
        assert "Traceback" not in err.details() and SECRET_VALUE not in err.details()
        assert len(err.details()) <= 2048
    err = rpc_error(stub.GetTask, get_request(b'{"job": 1'))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "resource_meta" in err.details()
    err = rpc_error(stub.GetTask, get_request(b'{}', task_type="unknown_type"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # Secrets are found in the mounted secrets directory too.
    assert stub.CreateTask(agent_pb2.CreateTaskRequest(template=template("test_async", secret="flyte_file_token"))).resource_meta


def test_prometheus_metrics_use_flytekits_names(agent):
    stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
    stub.CreateTask(agent_pb2.CreateTaskRequest(template=template("test_async"), inputs=int_inputs(x=1)))
    rpc_error(stub.CreateTask, agent_pb2.CreateTaskRequest(template=template("nope_type")))
    rpc_error(stub.CreateTask, agent_pb2.CreateTaskRequest(template=template("test_async", error="unavailable")))
    text = urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5).read().decode()

    def series(name: str, **labels) -> list[str]:
        return [l for l in text.splitlines() if l.startswith(name + "{")
                and all(f'{k}="{v}"' in l for k, v in labels.items())]

    assert series("flyte_connector_requests_success_total", task_type="test_async", operation="create")
    assert series("flyte_connector_requests_failure_total", task_type="test_async", operation="create", error_code="503")
    # Types this agent does not serve share one label, so callers cannot grow the series.
    assert series("flyte_connector_requests_failure_total", task_type="unknown", operation="create", error_code="404")
    assert "nope_type" not in text
    assert series("flyte_connector_request_latency_seconds_count", task_type="test_async", operation="create")
    assert series("flyte_connector_request_latency_seconds_sum", task_type="test_async", operation="create")
    assert series("flyte_connector_input_literal_bytes_count", task_type="test_async")
    assert SECRET_VALUE not in text


class _Collector:
    """A minimal OTLP trace collector."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans = []
        outer = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        outer.spans.extend(ss.spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def test_traces_are_exported_over_otlp_continuing_the_callers_trace():
    collector = _Collector()
    a = Agent(agent_binary(), env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
                                  "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        from flyteidl2.connector import connector_pb2 as c2
        from flyteidl2.connector import service_pb2_grpc as s2

        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        trace2 = "5cf92f3577b34da6a3ce929d0e0e4737"
        stub = agent_pb2_grpc.AgentMetadataServiceStub(a.channel)
        stub.ListAgents(agent_pb2.ListAgentsRequest(), metadata=[("traceparent", f"00-{trace_id}-{parent_id}-01")])
        s2.ConnectorMetadataServiceStub(a.channel).ListConnectors(
            c2.ListConnectorsRequest(), metadata=[("traceparent", f"00-{trace2}-{parent_id}-01")])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not {trace_id, trace2} <= {s.trace_id.hex() for s in collector.spans}:
            time.sleep(0.1)
        ours = [s for s in collector.spans if s.trace_id.hex() == trace_id]
        assert ours, f"no span of trace {trace_id} exported; got {len(collector.spans)} spans\n{a.logs()}"
        assert ours[0].parent_span_id.hex() == parent_id
        assert "ListAgents" in ours[0].name

        def protocol(span):
            return next(kv.value.string_value for kv in span.attributes if kv.key == "flyte.protocol")

        assert protocol(ours[0]) == "flyteidl"
        flyte2 = [s for s in collector.spans if s.trace_id.hex() == trace2]
        assert flyte2 and "ListConnectors" in flyte2[0].name and protocol(flyte2[0]) == "flyteidl2"
    finally:
        assert a.stop() == 0
        collector.server.stop(0)


def test_sigterm_lets_in_flight_calls_finish_then_exits_zero():
    a = Agent(agent_binary(), args=("--grace-period", "10s"))
    results = {}

    def slow_call(i):
        results[i] = execute_sync(a, template("test_sync", sleep_ms=1500), literals_pb2.LiteralMap())

    threads = [threading.Thread(target=slow_call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    a.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=10)
    # Every call in flight at SIGTERM completes: none is dropped.
    assert sorted(results) == list(range(8))
    assert all(r.phase == PHASE["SUCCEEDED"] for r in results.values()), "in-flight calls must complete"
    assert a.proc.wait(timeout=10) == 0
    assert "Shutting down" in a.logs()


def test_grace_period_bounds_shutdown():
    a = Agent(agent_binary(), args=("--grace-period", "500ms"))
    errors = []

    def slow_call():
        try:
            execute_sync(a, template("test_sync", sleep_ms=20000), literals_pb2.LiteralMap(), timeout=30)
        except grpc.RpcError as e:
            errors.append(e.code())

    t = threading.Thread(target=slow_call)
    t.start()
    time.sleep(0.3)
    started = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    t.join(timeout=10)
    assert errors, "the call cut off by the grace period must fail on the client, not hang"


def test_bad_configuration_fails_start_up_naming_the_setting():
    for env, needle in [({"AGENT_PORT": "eighty"}, "port"), ({"AGENT_LOG_FORMAT": "xml"}, "log_format"),
                        ({"AGENT_GRACE_PERIOD": "forever"}, "grace_period")]:
        p = subprocess.run([agent_binary()], env=env, capture_output=True, text=True, timeout=10)
        assert p.returncode == 2, p
        assert needle in p.stderr and "panicked" not in p.stderr, p.stderr
    p = subprocess.run([agent_binary(), "--help"], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0 and "--metrics-port" in p.stdout


def test_json_logs_and_loopback_only_listening():
    a = Agent(agent_binary(), args=("--log-format", "json"))
    try:
        agent_pb2_grpc.AgentMetadataServiceStub(a.channel).ListAgents(agent_pb2.ListAgentsRequest())
        first = next(l for l in a.logs().splitlines() if l.startswith("{"))
        assert json.loads(first)["level"] == "INFO"
        listening = open("/proc/net/tcp").read()
        port_hex = f"{a.port:04X}"
        local = [l.split()[1] for l in listening.splitlines()[1:] if l.split()[1].endswith(":" + port_hex) and l.split()[3] == "0A"]
        assert local == ["0100007F:" + port_hex], local
    finally:
        assert a.stop() == 0
