"""agent-bigquery end to end: templates from flytekitplugins-bigquery's BigQueryTask, sent by
the official flyteidl stubs to the agent binary, which talks to the BigQuery emulator binary."""

from __future__ import annotations

import datetime
import json
import time
import urllib.request
from collections import OrderedDict

import grpc
import pytest
from flyteidl.admin import agent_pb2
from flyteidl.core import identifier_pb2
from flyteidl.service import agent_pb2_grpc

from conftest import Agent, Emulator, workspace_binary

TASK_TYPE = "bigquery_query_job_task"
SUCCEEDED, FAILED, RETRYABLE_FAILED = 3, 5, 8


@pytest.fixture(scope="module")
def emulator():
    e = Emulator("bigquery", "--pending-ms", "50", "--running-ms", "150")
    yield e
    e.stop()


@pytest.fixture(scope="module")
def bq_agent(emulator):
    a = Agent(workspace_binary("agent-bigquery"), env={"BIGQUERY_EMULATOR_HOST": emulator.host})
    yield a
    assert a.stop() == 0, a.logs()


def serialize(task):
    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    settings = SerializationSettings(image_config=ImageConfig.auto_default_image(), project="proj", domain="dev", version="v1")
    return get_serializable(OrderedDict(), settings, task).template.to_flyte_idl()


def literal_map(task, values: dict):
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine

    ctx = FlyteContextManager.current_context()
    return TypeEngine.dict_to_literal_map(ctx, values, task.python_interface.inputs).to_flyte_idl()


def metadata(execution: str, retry: int = 0) -> agent_pb2.TaskExecutionMetadata:
    return agent_pb2.TaskExecutionMetadata(task_execution_id=identifier_pb2.TaskExecutionIdentifier(
        task_id=identifier_pb2.Identifier(resource_type=identifier_pb2.TASK, project="proj", domain="dev", name="bq", version="v1"),
        node_execution_id=identifier_pb2.NodeExecutionIdentifier(
            node_id="n0", execution_id=identifier_pb2.WorkflowExecutionIdentifier(project="proj", domain="dev", name=execution)),
        retry_attempt=retry), namespace="proj-dev")


def emulator_jobs(emulator) -> dict:
    return json.loads(urllib.request.urlopen(f"{emulator.url}/_emulator/bigquery/jobs", timeout=5).read())


def run_to_end(agent, create: agent_pb2.CreateTaskRequest):
    stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
    meta = stub.CreateTask(create, timeout=10).resource_meta
    category = agent_pb2.TaskCategory(name=TASK_TYPE, version=0)
    for _ in range(200):
        r = stub.GetTask(agent_pb2.GetTaskRequest(task_type=TASK_TYPE, resource_meta=meta, task_category=category,
                                                  output_prefix=create.output_prefix), timeout=10).resource
        if r.phase in (SUCCEEDED, FAILED, RETRYABLE_FAILED, 4):
            stub.DeleteTask(agent_pb2.DeleteTaskRequest(task_type=TASK_TYPE, resource_meta=meta, task_category=category), timeout=10)
            return meta, r
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def bigquery_task(**kwargs):
    from flytekitplugins.bigquery import BigQueryConfig, BigQueryTask

    return BigQueryTask(task_config=kwargs.pop("config", BigQueryConfig(ProjectID="flyte-test", Location="US")), **kwargs)


def test_listed_under_flytekits_name(bq_agent):
    agents = agent_pb2_grpc.AgentMetadataServiceStub(bq_agent.channel).ListAgents(agent_pb2.ListAgentsRequest()).agents
    assert [(a.name, a.is_sync, [c.name for c in a.supported_task_categories]) for a in agents] == \
        [("Bigquery Connector", False, [TASK_TYPE])]


def test_inputs_of_each_type_become_typed_parameters(bq_agent, emulator):
    from flytekit import StructuredDataset, kwtypes

    task = bigquery_task(
        name="bq.params",
        inputs=kwtypes(version=int, ratio=float, name=str, day=str, flag=bool, when=datetime.datetime,
                       wait=datetime.timedelta, ids=list[int]),
        output_structured_dataset_type=StructuredDataset,
        query_template="SELECT @version, @ratio, @name, @day, @flag, @when, @wait, @ids",
    )
    values = dict(version=7, ratio=0.5, name="flyte", day="2024-01-31", flag=True,
                  when=datetime.datetime(2024, 1, 31, 12, 30, tzinfo=datetime.timezone.utc),
                  wait=datetime.timedelta(minutes=90), ids=[1, 2, 3])
    create = agent_pb2.CreateTaskRequest(template=serialize(task), inputs=literal_map(task, values),
                                         output_prefix="gs://bucket/out/0", task_execution_metadata=metadata("params"))
    meta, r = run_to_end(bq_agent, create)
    assert r.phase == SUCCEEDED, r.message
    uri = r.outputs.literals["results"].scalar.structured_dataset.uri
    assert uri.startswith("bq://flyte-test:"), uri
    assert r.log_links[0].name == "BigQuery Console"
    job_id = json.loads(meta)["job_id"]
    job = next(j for j in emulator_jobs(emulator)["jobs"] if j["job_id"] == job_id)
    params = {p["name"]: (p["parameterType"], p["parameterValue"]) for p in job["configuration"]["query"]["queryParameters"]}
    assert params["version"] == ({"type": "INT64"}, {"value": "7"})
    assert params["ratio"] == ({"type": "FLOAT64"}, {"value": "0.5"})
    assert params["day"] == ({"type": "STRING"}, {"value": "2024-01-31"})
    assert params["flag"] == ({"type": "BOOL"}, {"value": "true"})
    assert params["when"] == ({"type": "TIMESTAMP"}, {"value": "2024-01-31T12:30:00Z"})
    assert params["wait"] == ({"type": "INTERVAL"}, {"value": "0-0 0 1:30:0"})
    assert params["ids"][0] == {"type": "ARRAY", "arrayType": {"type": "INT64"}}
    assert [v["value"] for v in params["ids"][1]["arrayValues"]] == ["1", "2", "3"]


def test_query_job_config_is_honoured_and_no_output_when_none_declared(bq_agent, emulator):
    from google.cloud import bigquery
    from flytekitplugins.bigquery import BigQueryConfig

    config = BigQueryConfig(ProjectID="flyte-test", Location="EU", QueryJobConfig=bigquery.QueryJobConfig(
        destination="p.d.t", write_disposition="WRITE_TRUNCATE", create_disposition="CREATE_IF_NEEDED",
        priority="BATCH", maximum_bytes_billed=1000000, use_legacy_sql=False, default_dataset="p.ds",
        allow_large_results=True))
    task = bigquery_task(name="bq.config", query_template="SELECT 1", config=config)
    meta, r = run_to_end(bq_agent, agent_pb2.CreateTaskRequest(template=serialize(task), output_prefix="gs://b/o/0"))
    assert r.phase == SUCCEEDED
    assert "results" not in r.outputs.literals, "the task declares no output"
    job = next(j for j in emulator_jobs(emulator)["jobs"] if j["job_id"] == json.loads(meta)["job_id"])
    q = job["configuration"]["query"]
    assert job["location"] == "EU"
    assert (q["writeDisposition"], q["createDisposition"], q["priority"], q["maximumBytesBilled"]) == \
        ("WRITE_TRUNCATE", "CREATE_IF_NEEDED", "BATCH", "1000000")
    assert q["destinationTable"] == {"projectId": "p", "datasetId": "d", "tableId": "t"}
    assert q["defaultDataset"] == {"projectId": "p", "datasetId": "ds"}


def test_repeated_create_makes_one_job_and_python_metas_are_read(bq_agent, emulator):
    from flytekitplugins.bigquery.connector import BigQueryMetadata

    task = bigquery_task(name="bq.once", query_template="SELECT 1")
    create = agent_pb2.CreateTaskRequest(template=serialize(task), output_prefix="gs://b/o/0",
                                         task_execution_metadata=metadata("exactly-once"))
    stub = agent_pb2_grpc.AsyncAgentServiceStub(bq_agent.channel)
    before = emulator_jobs(emulator)
    metas = {stub.CreateTask(create, timeout=10).resource_meta for _ in range(3)}
    after = emulator_jobs(emulator)
    assert len(metas) == 1
    assert len(after["jobs"]) == len(before["jobs"]) + 1
    assert after["insert_requests"] == before["insert_requests"] + 3
    # A meta as the Python agent encodes it (", " separators) is accepted.
    ours = json.loads(metas.pop())
    py_meta = BigQueryMetadata(job_id=ours["job_id"], project=ours["project"], location=ours["location"]).encode()
    assert b'", "' in py_meta
    category = agent_pb2.TaskCategory(name=TASK_TYPE, version=0)
    time.sleep(0.3)
    r = stub.GetTask(agent_pb2.GetTaskRequest(task_type=TASK_TYPE, resource_meta=py_meta, task_category=category)).resource
    assert r.phase == SUCCEEDED and r.outputs.literals["results"].scalar.structured_dataset.uri.startswith("bq://")


def test_googles_own_client_reads_the_emulators_jobs(bq_agent, emulator):
    """The emulator speaks the real API: Google's Python client reads the job back."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    task = bigquery_task(name="bq.google", query_template="SELECT 1")
    meta, r = run_to_end(bq_agent, agent_pb2.CreateTaskRequest(template=serialize(task), output_prefix="gs://b/o/0"))
    client = bigquery.Client(project="flyte-test", credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=emulator.url))
    job = client.get_job(json.loads(meta)["job_id"], location="US")
    assert job.state == "DONE" and job.error_result is None
    assert job.destination.project == "flyte-test"
    with pytest.raises(Exception) as e:
        client.get_job("no_such_job", location="US")
    assert "Not found: Job flyte-test:US.no_such_job" in str(e.value)


def test_bad_templates_are_invalid_argument(bq_agent):
    from flytekitplugins.bigquery import BigQueryConfig

    task = bigquery_task(name="bq.bad", query_template="SELECT 1", config=BigQueryConfig(ProjectID="", Location=None))
    template = serialize(task)
    del template.custom.fields["ProjectID"]
    with pytest.raises(grpc.RpcError) as e:
        agent_pb2_grpc.AsyncAgentServiceStub(bq_agent.channel).CreateTask(agent_pb2.CreateTaskRequest(template=template))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ProjectID" in e.value.details()


def test_emulator_faults_do_not_fail_tasks(bq_agent, emulator):
    def fault(rule):
        req = urllib.request.Request(f"{emulator.url}/_emulator/faults", data=json.dumps(rule).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=5).read()

    fault({"action": {"kind": "status", "code": 429, "retry_after_secs": 1}, "times": 2})
    fault({"action": {"kind": "status", "code": 503}, "times": 2, "method": "GET"})
    fault({"action": {"kind": "drop_response"}, "times": 1, "method": "POST", "path_contains": "/jobs"})
    task = bigquery_task(name="bq.faults", query_template="SELECT 1")
    before = len(emulator_jobs(emulator)["jobs"])
    _, r = run_to_end(bq_agent, agent_pb2.CreateTaskRequest(template=serialize(task), output_prefix="gs://b/o/0",
                                                           task_execution_metadata=metadata("faults")))
    assert r.phase == SUCCEEDED, r.message
    assert len(emulator_jobs(emulator)["jobs"]) == before + 1
