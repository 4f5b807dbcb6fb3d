"""agentctl end to end: task specs serialized by flytekit (binary TaskSpec, as `pyflyte
package` writes them, and its protobuf JSON), inputs built by flytekit's TypeEngine, run
against agent-openai and the OpenAI emulator, and checked like Propeller would."""

from __future__ import annotations

import json
import subprocess
from collections import OrderedDict

import pytest
from google.protobuf import json_format

from conftest import Agent, Emulator, workspace_binary

KEY = "sk-emulator-key"


@pytest.fixture(scope="module")
def endpoint():
    e = Emulator("openai", "--step-ms", "60")
    a = Agent(workspace_binary("agent-openai"), env={"OPENAI_BASE_URL": f"{e.url}/v1", "_FSEC_FLYTE_OPENAI_API_KEY": KEY})
    yield f"http://{a.address}"
    assert a.stop() == 0, a.logs()
    e.stop()


def task_spec(task):
    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    settings = SerializationSettings(image_config=ImageConfig.auto_default_image(), project="proj", domain="dev", version="v1")
    return get_serializable(OrderedDict(), settings, task).to_flyte_idl()


def literal_map(task, **values):
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine

    ctx = FlyteContextManager.current_context()
    types = dict(task.python_interface.inputs.items())
    return TypeEngine.dict_to_literal_map(ctx, values, types).to_flyte_idl()


def agentctl(endpoint, *args):
    return subprocess.run([workspace_binary("agentctl"), "--endpoint", endpoint, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_chatgpt_task_spec_from_flytekit(endpoint, tmp_path, encoding):
    from flytekitplugins.openai import ChatGPTTask

    task = ChatGPTTask(name="chat", openai_organization="org-flyte", chatgpt_config={"model": "gpt-4o-mini", "max_tokens": 50})
    spec, inputs = task_spec(task), literal_map(task, message="Hello from flytekit")
    template, values = tmp_path / f"spec.{encoding}", tmp_path / f"inputs.{encoding}"
    if encoding == "binary":
        template.write_bytes(spec.SerializeToString())
        values.write_bytes(inputs.SerializeToString())
    else:
        template.write_text(json_format.MessageToJson(spec))
        values.write_text(json_format.MessageToJson(inputs))
    r = agentctl(endpoint, "run", "--task-type", "chatgpt", "--template", str(template), "--inputs", str(values))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"o0": "echo: Hello from flytekit"}
    assert "SUCCEEDED" in r.stderr


def test_batch_task_spec_from_flytekit_runs_to_completion(endpoint, tmp_path):
    from flytekitplugins.openai import BatchEndpointTask

    task = BatchEndpointTask(name="batch", config={"metadata": {"team": "ml"}})
    (tmp_path / "spec.pb").write_bytes(task_spec(task).SerializeToString())
    (tmp_path / "inputs.pb").write_bytes(literal_map(task, input_file_id="file-abc").SerializeToString())
    r = agentctl(endpoint, "run", "--task-type", "openai-batch", "--template", str(tmp_path / "spec.pb"),
                 "--inputs", str(tmp_path / "inputs.pb"), "--poll-interval", "50ms")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    phases = [l for l in lines if "RUNNING" in l or "SUCCEEDED" in l]
    assert phases[0].split("] ")[1].startswith("RUNNING") and "SUCCEEDED" in phases[-1], r.stderr
    assert list(json.loads(r.stdout)) == ["result"]


def test_list_and_health_match_the_official_client(endpoint):
    r = agentctl(endpoint, "list")
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert any("chatgpt (v0)" in row and " sync " in row for row in rows), r.stdout
    assert any("openai-batch (v0)" in row and " async " in row for row in rows), r.stdout
    r = agentctl(endpoint, "health")
    assert (r.returncode, r.stdout.strip()) == (0, "SERVING")
