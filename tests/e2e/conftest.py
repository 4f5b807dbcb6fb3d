"""Harness for the end-to-end tests: starts agent binaries on loopback ports and talks
to them with the official flyteidl Python client."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_binary() -> str:
    path = os.environ.get("AGENT_TEST_BINARY") or str(ROOT / "target/debug/test_agent")
    if not os.path.exists(path):
        raise RuntimeError(f"{path} does not exist: run `cargo xtask e2e`, which builds it")
    return path


def workspace_binary(name: str) -> str:
    """A binary of the workspace (agent-bigquery, emulators, ...), built by `cargo xtask e2e`."""
    path = os.path.join(os.environ.get("AGENT_BIN_DIR") or str(ROOT / "target/debug"), name)
    if not os.path.exists(path):
        raise RuntimeError(f"{path} does not exist: run `cargo xtask e2e`, which builds it")
    return path


class Emulator:
    """An `emulators <service>` process on a free loopback port."""

    def __init__(self, service: str, *args: str):
        self.proc = subprocess.Popen([workspace_binary("emulators"), service, "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.host = self.proc.stdout.readline().strip()
        if not self.host:
            raise RuntimeError(f"emulator {service} did not start")
        self.url = f"http://{self.host}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)


# Secret hygiene across the whole suite: every secret value any test hands an agent
# (environment, secrets directory, or a Flyte 2 request's connection) is remembered, and no
# response message, error message, log line or metric label of any agent may contain it, nor
# a bearer credential made from one (test_secret_echo.py makes the services repeat them).
SECRETS: set[str] = set()
LEAKS: list[str] = []
AGENTS: list["Agent"] = []
_SECRET_NAME = re.compile(r"^_FSEC_|SECRET|TOKEN|PASSWORD|PASSPHRASE|API_KEY|PRIVATE_KEY")


def remember_secrets(env: dict[str, str]) -> None:
    # Settings about secrets (FLYTE_SECRETS_DEFAULT_DIR, *_FILE paths) are not secrets.
    values = [v for k, v in env.items()
              if _SECRET_NAME.search(k) and not k.startswith("FLYTE_SECRETS_") and not k.endswith(("_FILE", "_DIR"))]
    secrets_dir = env.get("FLYTE_SECRETS_DEFAULT_DIR")
    if secrets_dir and os.path.isdir(secrets_dir):
        values += [p.read_text(errors="replace") for p in pathlib.Path(secrets_dir).iterdir() if p.is_file()]
    for value in values:
        # Multi-line values (PEM keys) are checked line by line, so a partial leak counts.
        for line in value.splitlines() or [value]:
            line = line.strip()
            if len(line) >= 8 and not line.startswith("-----"):
                SECRETS.add(line)


# Credentials the agents make from their secrets (OAuth access tokens, Snowflake JWTs) are
# not among SECRETS; a service that repeats its Authorization header shows them after "Bearer".
_BEARER = re.compile(r"[Bb]earer (?!\[REDACTED\])[A-Za-z0-9._~+/=-]{12,}")


def find_leaks(where: str, text: str | bytes) -> None:
    blob = text if isinstance(text, str) else text.decode("latin-1")
    for secret in SECRETS:
        if secret in blob:
            LEAKS.append(f"{where}: contains the secret {secret[:4]}…")
    if (token := _BEARER.search(blob)) is not None:
        LEAKS.append(f"{where}: contains a bearer credential {token.group(0)[:11]}…")


class _Hygiene(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
               grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Checks every answer (message or error) an agent sends for secret values."""

    def _check_error(self, method, error):
        if isinstance(error, grpc.RpcError) and hasattr(error, "details"):
            find_leaks(f"{method} error", error.details() or "")

    def _unary(self, continuation, details, request):
        call = continuation(details, request)
        if call.exception() is not None:
            self._check_error(details.method, call.exception())
        else:
            find_leaks(f"{details.method} response", call.result().SerializeToString())
        return call

    def _stream(self, continuation, details, request):
        responses = continuation(details, request)
        method = details.method

        def checked():
            try:
                for response in responses:
                    find_leaks(f"{method} response", response.SerializeToString())
                    yield response
            except grpc.RpcError as e:
                self._check_error(method, e)
                raise
        return _CheckedStream(responses, checked())

    intercept_unary_unary = _unary
    intercept_stream_unary = _unary
    intercept_unary_stream = _stream
    intercept_stream_stream = _stream


class _CheckedStream:
    """A response stream whose messages are checked, keeping the call's other methods."""

    def __init__(self, call, iterator):
        self._call, self._iterator = call, iterator

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._iterator)

    def __getattr__(self, name):
        return getattr(self._call, name)


class Agent:
    """An agent process on 127.0.0.1 with its own gRPC and metrics ports."""

    def __init__(self, binary: str, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 credentials: grpc.ChannelCredentials | None = None):
        self.port = free_port()
        self.metrics_port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="agent-", suffix=".log", delete=False)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "_FSEC_", "OTEL_"))}
        full_env.update(env or {})
        remember_secrets(env or {})
        AGENTS.append(self)
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "--listen-address", "127.0.0.1", "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), *args],
            env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.address = f"127.0.0.1:{self.port}"
        channel = (grpc.secure_channel(self.address, credentials) if credentials
                   else grpc.insecure_channel(self.address))
        self.channel = grpc.intercept_channel(channel, _Hygiene())
        self.wait_serving()

    def wait_serving(self, timeout: float = 15.0) -> None:
        stub = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"agent not SERVING after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return pathlib.Path(self.log.name).read_text(errors="replace")

    def scrape_metrics(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            find_leaks("metrics", self.scrape_metrics())
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.channel.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


SECRET_VALUE = "e2e-s3cr3t-value-4242"


@pytest.fixture(scope="module")
def agent():
    """The test agent with one secret in the environment and one in a secrets dir."""
    secrets_dir = tempfile.mkdtemp(prefix="secrets-")
    pathlib.Path(secrets_dir, "flyte_file_token").write_text("  file-secret-value-77\n")
    a = Agent(agent_binary(), env={
        "_FSEC_FLYTE_TEST_TOKEN": SECRET_VALUE,
        "FLYTE_SECRETS_DEFAULT_DIR": secrets_dir,
    })
    yield a
    code = a.stop()
    assert code == 0, f"agent exited with {code} on SIGTERM:\n{a.logs()}"
    assert SECRET_VALUE not in a.logs(), "a secret value reached the agent's logs"


@pytest.fixture(scope="session", autouse=True)
def no_secret_leaks(request):
    """After the whole suite: no agent logged, answered or labelled a metric with a secret."""
    yield
    for a in AGENTS:
        find_leaks(f"log of {pathlib.Path(a.proc.args[0]).name} ({a.log.name})", a.logs())
    whole_suite = not request.config.getoption("keyword") and request.config.args == ["tests/e2e"]
    if whole_suite:
        assert len(SECRETS) >= 5, f"the hygiene check saw too few secrets to mean anything: {len(SECRETS)}"
    assert not LEAKS, "secret values leaked:\n" + "\n".join(sorted(set(LEAKS)))


@pytest.fixture(scope="module")
def bigquery():
    """agent-bigquery against the BigQuery emulator (anonymous credentials), per module."""
    e = Emulator("bigquery", "--pending-ms", "50", "--running-ms", "150")
    a = Agent(workspace_binary("agent-bigquery"), env={"BIGQUERY_EMULATOR_HOST": e.host})
    yield a, e
    assert a.stop() == 0, a.logs()
    e.stop()


def execute_sync(agent, template, inputs, timeout: float = 30, metadata=None):
    """ExecuteTaskSync as Propeller streams it (the header, then the inputs); the one
    answer's resource."""
    from flyteidl.admin import agent_pb2
    from flyteidl.service import agent_pb2_grpc

    def requests():
        yield agent_pb2.ExecuteTaskSyncRequest(header=agent_pb2.CreateRequestHeader(template=template, output_prefix="s3://b/o/0"))
        yield agent_pb2.ExecuteTaskSyncRequest(inputs=inputs)

    stub = agent_pb2_grpc.SyncAgentServiceStub(agent.channel)
    responses = list(stub.ExecuteTaskSync(requests(), timeout=timeout, metadata=metadata))
    assert len(responses) == 1 and responses[0].WhichOneof("res") == "header"
    return responses[0].header.resource
