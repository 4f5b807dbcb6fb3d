"""Secret hygiene against services that repeat what they are sent: every agent binary runs
against its emulator with echo faults (an error status, or a 200 whose text becomes the
result), over Flyte 1 with the pod's secret and over Flyte 2 with a different connection
secret, through create/get/delete and ExecuteTaskSync. The echoes carry the credentials
the agents send (the pod's key, the request's, tokens and JWTs made from them); the
suite-wide check in conftest (every response, error, log line and metric) fails the run if
one comes back. Each test also checks that the echoes did reach the agent, scrubbed."""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import time
import urllib.request

import grpc
import pytest
from flyteidl.admin import agent_pb2
from flyteidl.service import agent_pb2_grpc
from flyteidl2.connector import connector_pb2 as c2
from flyteidl2.connector import service_pb2_grpc as s2

import test_bigquery
import test_databricks
import test_openai
import test_snowflake
from conftest import Agent, Emulator, workspace_binary
from test_flyte2 import TERMINAL, category, connection, create_request

ECHOED = "echo of your request"


class Faults:
    """An emulator's fault endpoint (over HTTPS with the test CA when `ca_file` is set)."""

    def __init__(self, base_url: str, ca_file: str | None = None):
        self.url = f"{base_url}/_emulator/faults"
        self.ctx = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def _send(self, method: str, data: bytes | None = None) -> None:
        req = urllib.request.Request(self.url, data=data, method=method, headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=5, context=self.ctx).read()

    def echo(self, code: int, method: str, path: str, times: int = 1) -> None:
        self._send("DELETE")
        rule = {"action": {"kind": "echo", "code": code}, "method": method, "path_contains": path, "times": times}
        self._send("POST", json.dumps(rule).encode())

    def clear(self) -> None:
        self._send("DELETE")


class Seen:
    """What the agent answered (messages, outputs, errors), to check the echoes came back scrubbed."""

    def __init__(self):
        self.texts: list[str] = []

    def call(self, fn, *args, **kwargs):
        try:
            answer = fn(*args, **kwargs)
        except grpc.RpcError as e:
            self.texts.append(e.details() or "")
            return None
        self.texts.append(str(answer))
        return answer

    def echoes(self) -> str:
        return "\n".join(t for t in self.texts if ECHOED in t)


def drive_async(agent: Agent, faults: Faults, paths: dict, create1, create2, conn, seen: Seen,
                get_codes=(200,)) -> None:
    """Flyte 1 and Flyte 2 create/get/delete, each call of the agent's service echoed (refused
    with 400, 401 and 503, once or until the deadline, and the status read answered with the
    echo)."""
    task_type = create1.template.type
    stub1 = agent_pb2_grpc.AsyncAgentServiceStub(agent.channel)
    stub2 = s2.AsyncConnectorServiceStub(agent.channel)
    cat1 = agent_pb2.TaskCategory(name=task_type, version=0)
    flyte1 = dict(
        create=lambda: stub1.CreateTask(create1, timeout=20),
        get=lambda meta, timeout=20: stub1.GetTask(agent_pb2.GetTaskRequest(task_type=task_type, resource_meta=meta,
                                                                            task_category=cat1), timeout=timeout),
        delete=lambda meta: stub1.DeleteTask(agent_pb2.DeleteTaskRequest(task_type=task_type, resource_meta=meta,
                                                                         task_category=cat1), timeout=20))
    flyte2 = dict(
        create=lambda: stub2.CreateTask(create2, timeout=20),
        get=lambda meta, timeout=20: stub2.GetTask(c2.GetTaskRequest(resource_meta=meta, task_category=category(task_type),
                                                                     connection=conn), timeout=timeout),
        delete=lambda meta: stub2.DeleteTask(c2.DeleteTaskRequest(resource_meta=meta, task_category=category(task_type),
                                                                  connection=conn), timeout=20))
    create_method, create_path = paths["create"]
    get_method, get_path = paths["get"]
    delete_method, delete_path = paths["delete"]
    for calls in (flyte1, flyte2):
        for code in (400, 401):
            faults.echo(code, create_method, create_path)
            seen.call(calls["create"])
        # A 503 is retried (and logged); the next attempt reaches the service.
        faults.echo(503, create_method, create_path)
        created = seen.call(calls["create"])
        faults.clear()
        assert created is not None, seen.texts[-1]
        meta = created.resource_meta
        # A status check the service keeps refusing until the deadline: reported as still
        # running, with why, and logged as a warning.
        faults.echo(503, get_method, get_path, times=50)
        seen.call(calls["get"], meta, timeout=3)
        for code in (503, *get_codes):
            faults.echo(code, get_method, get_path)
            seen.call(calls["get"], meta)
        faults.clear()
        for code in (400, 503):
            faults.echo(code, delete_method, delete_path)
            seen.call(calls["delete"], meta)
        faults.clear()


def check_scrubbed(seen: Seen, credentials_in_echo: bool = True) -> None:
    echoes = seen.echoes()
    assert echoes, "no echo reached the agent's answers:\n" + "\n".join(seen.texts)
    if credentials_in_echo:
        assert "[REDACTED]" in echoes, echoes


# --- BigQuery: anonymous credentials against the emulator; the request's body is echoed ----

def test_bigquery_echoes(bigquery):
    agent, emulator = bigquery
    task = test_bigquery.bigquery_task(name="bq.echo", query_template="SELECT 1")
    template = test_bigquery.serialize(task)
    conn = connection("bigquery_query_job_task", flyte_bigquery_token="bq-conn-echo-secret-3141")
    create1 = agent_pb2.CreateTaskRequest(template=template, output_prefix="gs://b/o/0",
                                          task_execution_metadata=test_bigquery.metadata("echo1"))
    create2 = create_request(template, conn=conn, metadata=test_bigquery.metadata("echo2"))
    seen = Seen()
    drive_async(agent, Faults(emulator.url), {"create": ("POST", "/jobs"), "get": ("GET", "/jobs/"),
                                              "delete": ("POST", "/cancel")}, create1, create2, conn, seen)
    # Google's client authenticates anonymously here: the echo holds the query, no credential.
    check_scrubbed(seen, credentials_in_echo=False)


# --- Databricks: the pod's PAT (Flyte 1) and the request's (Flyte 2) ----------------------

CONN_PAT = "dapi-connection-echo-token-2718"


@pytest.fixture(scope="module")
def databricks():
    ca_file = os.path.join(tempfile.mkdtemp(prefix="dbx-ca-"), "ca.pem")
    e = Emulator("databricks", "--ca-out", ca_file, "--pending-ms", "50", "--running-ms", "150",
                 "--pat", test_databricks.PAT, "--pat", CONN_PAT)
    a = Agent(workspace_binary("agent-databricks"), env={
        "FLYTE_DATABRICKS_INSTANCE": e.host, "SSL_CERT_FILE": ca_file,
        "_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN": test_databricks.PAT})
    yield a, e, ca_file
    assert a.stop() == 0, a.logs()
    e.stop()


def test_databricks_echoes(databricks):
    from flytekitplugins.spark import DatabricksV2

    agent, emulator, ca_file = databricks
    template = test_databricks.serialize(test_databricks.databricks_task(DatabricksV2, emulator.host))
    conn = connection("databricks", flyte_databricks_access_token=CONN_PAT)
    create1 = agent_pb2.CreateTaskRequest(template=template, output_prefix="s3://b/o/0",
                                          task_execution_metadata=test_databricks.metadata("echo1"))
    create2 = create_request(template, conn=conn, metadata=test_databricks.metadata("echo2"))
    seen = Seen()
    drive_async(agent, Faults(f"https://{emulator.host}", ca_file),
                {"create": ("POST", "runs/submit"), "get": ("GET", "runs/get"), "delete": ("POST", "runs/cancel")},
                create1, create2, conn, seen)
    check_scrubbed(seen)


# --- Snowflake: JWTs signed with the pod's key (Flyte 1) and with the request's (Flyte 2) -

@pytest.fixture(scope="module")
def snowflake():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    # A second user whose key only the Flyte 2 requests carry.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    conn_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    pub = os.path.join(tempfile.mkdtemp(prefix="sf-echo-"), "conn.pub")
    with open(pub, "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    account = test_snowflake.ACCOUNT.upper()
    e = Emulator("snowflake", "--user", f"{account}.FLYTE={test_snowflake.FIXTURES / 'rsa_key.pub'}",
                 "--user", f"{account}.ECHO2={pub}", "--running-ms", "150")
    a = Agent(workspace_binary("agent-snowflake"), env={
        "SNOWFLAKE_BASE_URL": e.url, "_FSEC_SNOWFLAKE_PRIVATE_KEY": (test_snowflake.FIXTURES / "rsa_key.p8").read_text()})
    yield a, e, conn_pem
    assert a.stop() == 0, a.logs()
    e.stop()


def test_snowflake_echoes(snowflake):
    from flytekitplugins.snowflake import SnowflakeConfig, SnowflakeTask

    agent, emulator, conn_pem = snowflake

    def template(user):
        config = SnowflakeConfig(user=user, account=test_snowflake.ACCOUNT, database="DB", schema="PUBLIC",
                                 warehouse="WH")
        return test_snowflake.serialize(SnowflakeTask(name=f"sf.echo.{user}", task_config=config,
                                                      query_template="select 1"))

    def sdk_template(user):
        # flyte-sdk's shape of the task (Flyte 2): the connection settings in custom, not config.
        t = template(user)
        t.custom.update(dict(t.config))
        t.ClearField("config")
        return t

    conn = connection("snowflake", snowflake_private_key=conn_pem)
    create1 = agent_pb2.CreateTaskRequest(template=template("flyte"), output_prefix="s3://b/o/0",
                                          task_execution_metadata=test_snowflake.metadata("echo1"))
    create2 = create_request(sdk_template("echo2"), conn=conn, metadata=test_snowflake.metadata("echo2"))
    seen = Seen()
    # A failed statement's message comes back as a 422 in the SQL API's error format.
    drive_async(agent, Faults(emulator.url),
                {"create": ("POST", "/statements"), "get": ("GET", "/statements/"), "delete": ("POST", "/cancel")},
                create1, create2, conn, seen, get_codes=(401, 422))
    check_scrubbed(seen)


# --- OpenAI: ChatGPT (sync, the answer is the output) and the Batch API -------------------

CONN_KEY = "sk-connection-echo-key-1618"


@pytest.fixture(scope="module")
def openai():
    e = Emulator("openai", "--step-ms", "60", "--api-key", test_openai.KEY, "--api-key", CONN_KEY)
    a = Agent(workspace_binary("agent-openai"), env={"OPENAI_BASE_URL": f"{e.url}/v1",
                                                      "_FSEC_FLYTE_OPENAI_API_KEY": test_openai.KEY})
    yield a, e
    assert a.stop() == 0, a.logs()
    e.stop()


def test_chatgpt_echoes(openai):
    from flytekitplugins.openai import ChatGPTTask

    agent, emulator = openai
    faults = Faults(emulator.url)
    template = test_openai.serialize(ChatGPTTask(name="chat.echo", openai_organization="org-echo",
                                                 chatgpt_config={"model": "gpt-4o-mini"}))
    message = test_openai.string_inputs(message="repeat my key")
    conn = connection("chatgpt", flyte_openai_api_key=CONN_KEY)
    stub2 = s2.AsyncConnectorServiceStub(agent.channel)
    seen = Seen()
    for code, times in ((200, 1), (400, 1), (401, 1), (503, 2), (503, 50)):
        # Flyte 1: ExecuteTaskSync, the answer (or the refusal) in the resource.
        faults.echo(code, "POST", "/chat/completions", times)
        seen.call(test_openai.execute_sync, agent, template, message)
        # Flyte 2: the sync call runs in CreateTask, its result is the meta GetTask returns.
        faults.echo(code, "POST", "/chat/completions", times)
        created = seen.call(stub2.CreateTask, create_request(template, message, conn=conn), timeout=20)
        if created is not None:
            seen.call(stub2.GetTask, c2.GetTaskRequest(resource_meta=created.resource_meta,
                                                       task_category=category("chatgpt"), connection=conn), timeout=20)
    faults.clear()
    check_scrubbed(seen)
    # The 200 echo is the task's output: there, the keys are scrubbed.
    assert any("o0" in t and "Bearer [REDACTED]" in t for t in seen.texts), seen.echoes()


def test_openai_batch_echoes(openai):
    from flytekitplugins.openai import BatchEndpointTask

    agent, emulator = openai
    template = test_openai.serialize(BatchEndpointTask(name="batch.echo", openai_organization="org-echo", config={}))
    values = test_openai.string_inputs(input_file_id="file-echo123")
    conn = connection("openai-batch", flyte_openai_api_key=CONN_KEY)
    create1 = agent_pb2.CreateTaskRequest(template=template, inputs=values, output_prefix="s3://b/o/0",
                                          task_execution_metadata=test_bigquery.metadata("batch-echo1"))
    create2 = create_request(template, values, conn=conn, metadata=test_bigquery.metadata("batch-echo2"))
    seen = Seen()
    drive_async(agent, Faults(emulator.url), {"create": ("POST", "/batches"), "get": ("GET", "/batches/batch_"),
                                              "delete": ("POST", "/cancel")}, create1, create2, conn, seen)
    check_scrubbed(seen)


def test_a_flood_of_junk_connection_secrets_is_refused_and_forgets_nothing(openai):
    """The flush attack end to end: many refused requests with junk secrets, then the pod's
    key still comes back scrubbed from an echo."""
    agent, emulator = openai
    from flytekitplugins.openai import ChatGPTTask

    stub2 = s2.AsyncConnectorServiceStub(agent.channel)
    for i in range(1100):
        junk = connection("openai-batch", junk=f"junk-flood-secret-{i:05}")
        with pytest.raises(grpc.RpcError) as e:
            stub2.GetTask(c2.GetTaskRequest(resource_meta=b"not a meta", task_category=category("openai-batch"),
                                            connection=junk), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    too_many = connection("openai-batch", **{f"k{i}": f"junk-many-secret-{i:05}" for i in range(60_000)})
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        stub2.GetTask(c2.GetTaskRequest(resource_meta=b"{}", task_category=category("openai-batch"),
                                        connection=too_many), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 64 secrets" in e.value.details()
    assert time.monotonic() - started < 10
    faults = Faults(emulator.url)
    faults.echo(401, "POST", "/chat/completions")
    template = test_openai.serialize(ChatGPTTask(name="chat.flood", chatgpt_config={"model": "gpt-4o-mini"}))
    r = test_openai.execute_sync(agent, template, test_openai.string_inputs(message="x"))
    faults.clear()
    assert ECHOED in r.message and "Bearer [REDACTED]" in r.message, r.message
