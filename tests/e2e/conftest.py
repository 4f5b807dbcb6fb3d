"""Harness for the end-to-end tests: starts agent binaries on loopback ports and talks
to them with the official flyteidl Python client."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_binary() -> str:
    path = os.environ.get("AGENT_TEST_BINARY") or str(ROOT / "target/debug/examples/test_agent")
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


class Agent:
    """An agent process on 127.0.0.1 with its own gRPC and metrics ports."""

    def __init__(self, binary: str, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 credentials: grpc.ChannelCredentials | None = None):
        self.port = free_port()
        self.metrics_port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="agent-", suffix=".log", delete=False)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "_FSEC_", "OTEL_"))}
        full_env.update(env or {})
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "--listen-address", "127.0.0.1", "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), *args],
            env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.address = f"127.0.0.1:{self.port}"
        self.channel = (grpc.secure_channel(self.address, credentials) if credentials
                        else grpc.insecure_channel(self.address))
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

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
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
