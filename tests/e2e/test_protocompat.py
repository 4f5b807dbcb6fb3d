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
