"""Our proto/ against the descriptors shipped in the official flyteidl 1.16.8 wheel."""

from google.protobuf import descriptor_pb2

import protocompat
from conftest import ROOT

OURS = ROOT / "crates/agent-core/src/gen/descriptor.bin"


def test_descriptors_match_flyteidl_exactly():
    problems = protocompat.compare_set(OURS.read_bytes())
    assert problems == [], "\n".join(problems)


def test_comparison_names_each_difference():
    """The comparison is only worth something if it catches drift; prove it does."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(OURS.read_bytes())
    for f in fds.file:
        if f.name == "flyteidl/admin/agent.proto":
            resource = next(m for m in f.message_type if m.name == "Resource")
            next(fl for fl in resource.field if fl.name == "phase").number = 15
            agent = next(m for m in f.message_type if m.name == "Agent")
            next(fl for fl in agent.field if fl.name == "is_sync").type = descriptor_pb2.FieldDescriptorProto.TYPE_INT32
        if f.name == "flyteidl/service/agent.proto":
            svc = next(s for s in f.service if s.name == "AsyncAgentService")
            next(m for m in svc.method if m.name == "GetTaskLogs").server_streaming = False
    problems = protocompat.compare_set(fds.SerializeToString())
    text = "\n".join(problems)
    assert "message flyteidl.admin.Resource [5]" in text
    assert "message flyteidl.admin.Resource [15]" in text
    assert "message flyteidl.admin.Agent [3]" in text and "TYPE_INT32" in text
    assert "service flyteidl.service.AsyncAgentService [GetTaskLogs]" in text
    assert len(problems) == 4, text


def test_flyte2_descriptors_match_flyteidl2_exactly():
    """Our flyteidl2 files against the official flyteidl2 wheel (pinned in requirements.txt)."""
    problems = protocompat.compare_set(OURS.read_bytes(), protocompat.V2)
    assert problems == [], "\n".join(problems)
    # The walk must really cover the protocol, not an empty closure.
    model = protocompat.walk(protocompat.pool_from_set(
        descriptor_pb2.FileDescriptorSet.FromString(OURS.read_bytes())), protocompat.V2)
    assert set(model.services) == {"flyteidl2.connector.AsyncConnectorService",
                                   "flyteidl2.connector.ConnectorMetadataService"}
    assert {"flyteidl2.core.Connection", "flyteidl2.task.Inputs", "flyteidl2.core.TaskTemplate",
            "flyteidl2.logs.dataplane.LogLine", "flyteidl2.common.RunIdentifier"} <= set(model.messages)


def test_flyte2_comparison_names_each_difference():
    fds = descriptor_pb2.FileDescriptorSet.FromString(OURS.read_bytes())
    for f in fds.file:
        if f.name == "flyteidl2/core/security.proto":
            conn = next(m for m in f.message_type if m.name == "Connection")
            next(fl for fl in conn.field if fl.name == "secrets").number = 7
        if f.name == "flyteidl2/connector/connector.proto":
            header = next(m for m in f.message_type if m.name == "CreateRequestHeader")
            next(fl for fl in header.field if fl.name == "max_dataset_size_bytes").type = \
                descriptor_pb2.FieldDescriptorProto.TYPE_INT32
        if f.name == "flyteidl2/connector/service.proto":
            svc = next(s for s in f.service if s.name == "ConnectorMetadataService")
            svc.method.remove(next(m for m in svc.method if m.name == "GetConnector"))
    text = "\n".join(problems := protocompat.compare_set(fds.SerializeToString(), protocompat.V2))
    assert "message flyteidl2.core.Connection [2]" in text
    assert "message flyteidl2.core.Connection [7]" in text
    assert "message flyteidl2.connector.CreateRequestHeader [4]" in text and "TYPE_INT32" in text
    assert "service flyteidl2.connector.ConnectorMetadataService [GetConnector]" in text
    # Without the method its request and response fall out of our closure.
    assert "message flyteidl2.connector.GetConnectorRequest: missing from ours" in text
    assert "message flyteidl2.connector.GetConnectorResponse: missing from ours" in text
    assert len(problems) == 6, text
