"""Harness of the Flyte 2 oracle suite: flyte-sdk's own connector servicer, run in-process on
a request, with the service boundary faked to record what it would send; and our agent
binaries, started against our emulators, given the very same request over gRPC.

The process plumbing (agent and emulator processes, secret-leak checks) is the end-to-end
suite's, loaded from tests/e2e/conftest.py under another name, so both suites start and
watch binaries the same way."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import json
import pathlib
import ssl
import sys
import time
import urllib.request

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flyteidl2.connector import connector_pb2 as c2
from flyteidl2.connector import service_pb2_grpc as s2
from flyteidl2.core import security_pb2

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

_spec = importlib.util.spec_from_file_location("e2e_harness", HERE.parent / "e2e" / "conftest.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)
Agent, Emulator, workspace_binary = harness.Agent, harness.Emulator, harness.workspace_binary

SUCCEEDED, FAILED = 3, 5
TERMINAL = (SUCCEEDED, FAILED, 4, 8)
OUTPUT_PREFIX = "s3://bucket/flyte2-oracle/0"

# One event loop for every in-process flyte-sdk call: its connectors cache clients and
# connections (functools/async_lru caches) that belong to the loop that made them.
LOOP = asyncio.new_event_loop()


def connection(task_type: str, **secrets: str) -> security_pb2.Connection:
    # Whatever a test sends as a secret must never come back from our agents.
    harness.remember_secrets({f"_FSEC_{k.upper()}": v for k, v in secrets.items()})
    return security_pb2.Connection(task_type=task_type, secrets=secrets)


def create_request(template, inputs, conn=None) -> c2.CreateTaskRequest:
    return c2.CreateTaskRequest(template=template, inputs=inputs, output_prefix=OUTPUT_PREFIX, connection=conn)


def category(template) -> c2.TaskCategory:
    return c2.TaskCategory(name=template.type, version=template.task_type_version)


class _Context:
    """The servicer context flyte-sdk's servicer reports errors through."""

    def __init__(self):
        self.code, self.details = None, None

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


def oracle(method: str, request):
    """flyte-sdk's own `AsyncConnectorService.<method>` on `request`, in-process; its
    response, or an AssertionError with the status it set."""
    from flyte.connectors._server import AsyncConnectorService

    ctx = _Context()
    response = LOOP.run_until_complete(getattr(AsyncConnectorService(), method)(request, ctx))
    if ctx.code is not None:
        raise AssertionError(f"flyte-sdk's {method} failed: {ctx.code} {ctx.details}")
    return response


class Ours:
    """What our agent did with a request: its meta and every GetTask answer."""

    def __init__(self, agent: Agent, request: c2.CreateTaskRequest):
        stub = s2.AsyncConnectorServiceStub(agent.channel)
        self.meta = stub.CreateTask(request, timeout=20).resource_meta
        self.resource = None
        for _ in range(400):
            r = stub.GetTask(c2.GetTaskRequest(resource_meta=self.meta, task_category=category(request.template),
                                               output_prefix=request.output_prefix, connection=request.connection),
                             timeout=10).resource
            if r.phase in TERMINAL:
                self.resource = r
                break
            time.sleep(0.05)
        assert self.resource is not None, "our agent's task did not finish"


def once_each(run_case):
    """`run_case(name)` run at most once per name, on demand; a failure is kept and raised
    again for each test of the case."""
    done = {}

    def run(name):
        if name not in done:
            try:
                done[name] = run_case(name)
            except Exception as e:  # noqa: BLE001 - raised again for every test of the case
                done[name] = e
        if isinstance(done[name], Exception):
            raise done[name]
        return done[name]
    return run


def create_error(agent: Agent, request: c2.CreateTaskRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        s2.AsyncConnectorServiceStub(agent.channel).CreateTask(request, timeout=20)
    return e.value


def get_json(url: str, context: ssl.SSLContext | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    return json.loads(urllib.request.urlopen(req, timeout=5, context=context).read())


def numbers_normalised(v):
    """JSON with every integral float as an int: flyte-sdk's template keeps numbers in a
    protobuf Struct (doubles), so it sends `2.0` where we send `2`, the same number."""
    if isinstance(v, dict):
        return {k: numbers_normalised(x) for k, x in v.items()}
    if isinstance(v, list):
        return [numbers_normalised(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


class RsaKey:
    """A fresh RSA key: its PKCS#8 PEM, its SPKI PEM and Snowflake's fingerprint of it."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()).decode()
        spki = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
        self.der = self.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())

    def encrypted_pem(self, passphrase: str) -> str:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(passphrase.encode())).decode()


@pytest.fixture(scope="session", autouse=True)
def no_secret_leaks():
    """After the suite: no agent logged, answered or labelled a metric with a secret."""
    yield
    for a in harness.AGENTS:
        harness.find_leaks(f"log of {pathlib.Path(a.proc.args[0]).name} ({a.log.name})", a.logs())
    assert not harness.LEAKS, "secret values leaked:\n" + "\n".join(sorted(set(harness.LEAKS)))
