"""agent-sensor end to end: FileSensor templates serialized by flytekit 1.16.31, the
official flyteidl stubs, the agent binary, and real storage emulators from the package
registries: moto's server (S3), gcp-storage-emulator (GCS) and Azurite (Azure Blob
Storage, from npm). Each scheme's sensor runs until the object appears. Metas flytekit's
SensorEngine writes are polled by the agent, and flytekit's own sensor engine, pointed at
the same S3 emulator, reaches the same answers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections import OrderedDict

import pytest
from flyteidl.admin import agent_pb2
from flyteidl.core import literals_pb2, tasks_pb2
from flyteidl.service import agent_pb2_grpc

from conftest import Agent, free_port, workspace_binary

RUNNING, SUCCEEDED, FAILED = 2, 3, 5
# Azurite's documented development account.
AZ_ACCOUNT = "devstoreaccount1"
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Server:
    """A storage emulator process on a free loopback port."""

    def __init__(self, name: str, args: list[str], port: int, ready_url: str):
        self.name, self.port = name, port
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start")
                time.sleep(0.2)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def s3():
    port = free_port()
    s = Server("moto", [shutil.which("moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, f"http://127.0.0.1:{port}/")
    import boto3

    s.client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")
    s.client.create_bucket(Bucket="flyte-data")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gcs():
    port = free_port()
    s = Server("gcp-storage-emulator", [shutil.which("gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port",
                                        str(port), "--in-memory"], port, f"http://127.0.0.1:{port}/storage/v1/b")
    body = json.dumps({"name": "flytegcs"}).encode()
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/storage/v1/b?project=flyte", data=body,
                                                  headers={"Content-Type": "application/json"}), timeout=5)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def azure():
    port = free_port()
    s = Server("azurite", [shutil.which("azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                           "--inMemoryPersistence", "--skipApiVersionCheck", "--silent", "--loose"],
               port, f"http://127.0.0.1:{port}/{AZ_ACCOUNT}")
    from azure.storage.blob import BlobServiceClient

    s.client = BlobServiceClient(f"http://127.0.0.1:{port}/{AZ_ACCOUNT}", credential={"account_name": AZ_ACCOUNT,
                                                                                       "account_key": AZ_KEY})
    s.client.create_container("flyte-az")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def sensor_agent(s3, gcs, azure, tmp_path_factory):
    root = tmp_path_factory.mktemp("watched")
    config = tmp_path_factory.mktemp("sensor-config") / "agent.yaml"
    config.write_text(json.dumps({"sensor": {
        "gcs_endpoint": f"http://127.0.0.1:{gcs.port}",
        "azure_endpoint": f"http://127.0.0.1:{azure.port}/{AZ_ACCOUNT}",
        "local_roots": [str(root)],
    }}))
    # S3 and Azure as flytekit's data persistence reads them: its variables.
    a = Agent(workspace_binary("agent-sensor"), env={
        "FLYTE_AWS_ENDPOINT": f"http://127.0.0.1:{s3.port}",
        "FLYTE_AWS_ACCESS_KEY_ID": "testing",
        "FLYTE_AWS_SECRET_ACCESS_KEY": "testing",
        "FLYTE_AZURE_STORAGE_ACCOUNT_NAME": AZ_ACCOUNT,
        "FLYTE_AZURE_STORAGE_ACCOUNT_KEY": AZ_KEY,
    }, args=("--config", str(config)))
    a.root = root
    yield a
    assert a.stop() == 0, a.logs()
    assert AZ_KEY not in a.logs()


def file_sensor_template():
    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.sensor.file_sensor import FileSensor
    from flytekit.tools.translator import get_serializable

    settings = SerializationSettings(image_config=ImageConfig.auto_default_image(), project="proj", domain="dev", version="v1")
    return get_serializable(OrderedDict(), settings, FileSensor(name="wait_for_file")).template.to_flyte_idl()


def path_input(path: str):
    return literals_pb2.LiteralMap(literals={"path": literals_pb2.Literal(scalar=literals_pb2.Scalar(
        primitive=literals_pb2.Primitive(string_value=path)))})


def create(agent, path: str) -> bytes:
    stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
    r = stub.CreateTask(agent_pb2.CreateTaskRequest(template=file_sensor_template(), inputs=path_input(path),
                                                    output_prefix="s3://b/o/0"), timeout=15)
    return r.resource_meta


def poll(agent, meta: bytes):
    stub = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
    category = agent_pb2.TaskCategory(name="sensor", version=0)
    return stub.GetTask(agent_pb2.GetTaskRequest(task_category=category, resource_meta=meta), timeout=30).resource


def test_the_template_is_flytekits_file_sensor():
    t = file_sensor_template()
    assert t.type == "sensor"
    from google.protobuf.json_format import MessageToDict

    assert MessageToDict(t.custom) == {"sensor_module": "flytekit.sensor.file_sensor", "sensor_name": "FileSensor",
                                      "sensor_config": None, "inputs": None}


@pytest.mark.parametrize("scheme", ["s3", "gs", "abfs", "local"])
def test_a_sensor_runs_until_the_object_appears(scheme, sensor_agent, s3, gcs, azure):
    # gcp-storage-emulator matches names before decoding them: object_store escapes '.'
    # and '-', which it then cannot find (real GCS decodes them); plain names for it.
    key = f"runs/{scheme}/done_flag"
    path = {
        "s3": f"s3://flyte-data/{key}",
        "gs": f"gs://flytegcs/{key}",
        "abfs": f"abfs://flyte-az@{AZ_ACCOUNT}.dfs.core.windows.net/{key}",
        "local": str(sensor_agent.root / "done.flag"),
    }[scheme]
    meta = create(sensor_agent, path)
    assert json.loads(meta) == {"sensor_module": "flytekit.sensor.file_sensor", "sensor_name": "FileSensor",
                                "sensor_config": None, "inputs": {"path": path}}
    r = poll(sensor_agent, meta)
    assert r.phase == RUNNING and "waiting for" in r.message, r.message
    if scheme == "s3":
        s3.client.put_object(Bucket="flyte-data", Key=key, Body=b"x")
    elif scheme == "gs":
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{gcs.port}/upload/storage/v1/b/flytegcs/o?uploadType=media&name={key}", data=b"x",
            headers={"Content-Type": "application/octet-stream"}), timeout=5)
    elif scheme == "abfs":
        azure.client.get_blob_client("flyte-az", key).upload_blob(b"x")
    else:
        (sensor_agent.root / "done.flag").write_text("x")
    r = poll(sensor_agent, meta)
    assert r.phase == SUCCEEDED, r.message


def test_a_folder_exists_once_something_is_in_it(sensor_agent, s3):
    meta = create(sensor_agent, "s3://flyte-data/outputs/day=1")
    assert poll(sensor_agent, meta).phase == RUNNING
    s3.client.put_object(Bucket="flyte-data", Key="outputs/day=1/part-0.parquet", Body=b"x")
    assert poll(sensor_agent, meta).phase == SUCCEEDED


def test_a_missing_bucket_fails_saying_so(sensor_agent):
    r = poll(sensor_agent, create(sensor_agent, "s3://no-such-bucket/x"))
    assert r.phase == FAILED and "bucket does not exist" in r.message, r.message


def test_flytekits_sensor_engine_and_the_agent_agree_on_each_others_metas(sensor_agent, s3):
    """flytekit's own SensorEngine (s3fs against the same emulator) and the agent: the
    meta either writes, the other polls, with the same answer."""
    from flytekit.models.literals import LiteralMap
    from flytekit.models.task import TaskTemplate
    from flytekit.sensor.base_sensor import SensorMetadata
    from flytekit.sensor.sensor_engine import SensorEngine

    from flytekit.configuration import DataConfig, S3Config
    from flytekit.core.context_manager import FlyteContextManager
    from flytekit.core.data_persistence import FileAccessProvider

    # flytekit's data persistence as FLYTE_AWS_ENDPOINT and FLYTE_AWS_* configure it.
    s3_config = S3Config(endpoint=f"http://127.0.0.1:{s3.port}", access_key_id="testing", secret_access_key="testing")
    access = FileAccessProvider(local_sandbox_dir="/tmp/flytekit-sensor", raw_output_prefix="s3://flyte-data/raw",
                                data_config=DataConfig(s3=s3_config))
    ctx = FlyteContextManager.current_context().with_file_access(access).build()
    path = "s3://flyte-data/engine/ready"
    engine = SensorEngine()
    theirs = asyncio.run(engine.create(TaskTemplate.from_flyte_idl(file_sensor_template()),
                                       inputs=LiteralMap.from_flyte_idl(path_input(path))))
    ours = create(sensor_agent, path)
    assert json.loads(theirs.encode()) == json.loads(ours)
    # s3fs keeps its session on the event loop it first ran on: one loop for every call.
    loop = asyncio.new_event_loop()

    def python_phase(meta):
        with FlyteContextManager.with_context(ctx.new_builder()):
            return loop.run_until_complete(engine.get(SensorMetadata(**json.loads(meta)))).phase
    assert poll(sensor_agent, theirs.encode()).phase == RUNNING
    assert python_phase(ours) == RUNNING
    s3.client.put_object(Bucket="flyte-data", Key="engine/ready", Body=b"x")
    assert poll(sensor_agent, theirs.encode()).phase == SUCCEEDED
    assert python_phase(ours) == SUCCEEDED
    loop.close()


def test_access_denied_fails_saying_so(azure, tmp_path):
    """Azurite checks the account key: with a wrong one, the sensor fails instead of
    waiting forever."""
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({"sensor": {"azure_endpoint": f"http://127.0.0.1:{azure.port}/{AZ_ACCOUNT}"}}))
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    a = Agent(workspace_binary("agent-sensor"), env={"FLYTE_AZURE_STORAGE_ACCOUNT_NAME": AZ_ACCOUNT,
                                                     "FLYTE_AZURE_STORAGE_ACCOUNT_KEY": wrong},
              args=("--config", str(config)))
    try:
        r = poll(a, create(a, f"abfs://flyte-az@{AZ_ACCOUNT}.dfs.core.windows.net/x"))
        assert r.phase == FAILED and "access denied" in r.message, r.message
        assert wrong not in r.message
    finally:
        assert a.stop() == 0, a.logs()


def test_other_sensors_are_refused_with_where_to_route_them(sensor_agent):
    import grpc

    t = tasks_pb2.TaskTemplate()
    t.CopyFrom(file_sensor_template())
    t.custom["sensor_module"] = "my_company.sensors"
    t.custom["sensor_name"] = "KafkaSensor"
    stub = agent_pb2_grpc.AsyncAgentServiceStub(sensor_agent.channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateTask(agent_pb2.CreateTaskRequest(template=t, inputs=path_input("x")), timeout=15)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "my_company.sensors.KafkaSensor" in err.value.details() and "Python connector" in err.value.details()


def test_storage_calls_are_client_spans_of_the_callers_trace(s3):
    """object_store's requests go through agent-core's tracing: a poll that carries a
    traceparent yields CLIENT spans (to moto) under the agent's SERVER span."""
    import secrets

    from conftest import Emulator
    from test_telemetry import spans

    collector = Emulator("otlp")
    a = Agent(workspace_binary("agent-sensor"), env={
        "FLYTE_AWS_ENDPOINT": f"http://127.0.0.1:{s3.port}", "FLYTE_AWS_ACCESS_KEY_ID": "testing",
        "FLYTE_AWS_SECRET_ACCESS_KEY": "testing", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        meta = create(a, "s3://flyte-data/traced/flag")
        trace_id = secrets.token_hex(16)
        stub = agent_pb2_grpc.AsyncAgentServiceStub(a.channel)
        r = stub.GetTask(agent_pb2.GetTaskRequest(task_category=agent_pb2.TaskCategory(name="sensor", version=0),
                                                  resource_meta=meta), timeout=30,
                         metadata=[("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")]).resource
        assert r.phase == RUNNING, r.message
        trace = spans(collector, trace_id)
        server = [s for s in trace if s["kind"] == "SERVER"]
        clients = [s for s in trace if s["kind"] == "CLIENT"]
        assert len(server) == 1 and server[0]["attributes"]["rpc.method"] == "GetTask", trace
        assert clients and all(c["parent_span_id"] == server[0]["span_id"] for c in clients), trace
        assert all(c["attributes"]["server.port"] == s3.port for c in clients), clients
        assert any("/flyte-data" in c["attributes"]["url.full"] for c in clients), clients
        assert not any("?" in c["attributes"]["url.full"] for c in clients), clients
    finally:
        assert a.stop() == 0, a.logs()
        collector.stop()
