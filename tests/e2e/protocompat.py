"""Compare our protocol descriptors with the ones shipped in the official wheels.

Two protocol generations are checked the same way: Flyte 1 (``flyteidl``, walked from the
services of ``flyteidl/service/agent.proto``) and Flyte 2 (``flyteidl2``, walked from
``flyteidl2/connector/service.proto``). Every service, method (with its streaming kind),
message, enum, enum value and field (name, number, type, type name, label, oneof)
reachable from the root must agree. Types we declare beyond that closure must agree
with upstream too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2, descriptor_pool


@dataclass(frozen=True)
class Generation:
    """One protocol generation: where the walk starts and which files are ours to check."""

    root_file: str
    # Types that are part of the contract without being reachable from the services.
    extra_roots: tuple[str, ...]
    # Our files of this generation start with this.
    file_prefix: str
    # Imports the official modules, registering their descriptors in the default pool.
    load_official: object


def _load_v1() -> None:
    from flyteidl.core import errors_pb2  # noqa: F401  registers errors.proto
    from flyteidl.service import agent_pb2  # noqa: F401  registers the closure


def _load_v2() -> None:
    from flyteidl2.connector import service_pb2  # noqa: F401  registers the closure


# Flyte 1: errors.proto declares the error.pb document Propeller reads. Not reachable
# from the services, but it must match upstream all the same.
V1 = Generation("flyteidl/service/agent.proto", ("flyteidl.core.ErrorDocument",), "flyteidl/", _load_v1)
# Flyte 2: connector.proto also declares CreateRequestHeader, which no method uses.
V2 = Generation("flyteidl2/connector/service.proto", ("flyteidl2.connector.CreateRequestHeader",),
                "flyteidl2/", _load_v2)

_LABELS = {1: "optional", 2: "required", 3: "repeated"}
_TYPES = {v: k for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()}


@dataclass
class Model:
    """A flat, comparable view of a descriptor closure."""

    services: dict[str, dict[str, tuple]] = field(default_factory=dict)
    messages: dict[str, dict[int, tuple]] = field(default_factory=dict)
    enums: dict[str, dict[str, int]] = field(default_factory=dict)


def _field_key(f) -> tuple:
    type_name = f.message_type.full_name if f.message_type else (
        f.enum_type.full_name if f.enum_type else "")
    is_map = bool(f.message_type and f.message_type.GetOptions().map_entry)
    oneof = f.containing_oneof.name if f.containing_oneof else ""
    # Synthetic oneofs would come from proto3 `optional`; none exist in the protocol.
    return (f.name, _TYPES[f.type], type_name, _label(f), oneof, is_map)


def _label(f) -> str:
    # protobuf >= 6 dropped FieldDescriptor.label in favour of predicates.
    if hasattr(f, "is_repeated"):
        return "repeated" if f.is_repeated else ("required" if f.is_required else "optional")
    return _LABELS[f.label]


def walk(pool: descriptor_pool.DescriptorPool, gen: Generation = V1) -> Model:
    """Collect everything reachable from the generation's services and extra roots."""
    model = Model()
    fd = pool.FindFileByName(gen.root_file)
    pending = []
    for svc in fd.services_by_name.values():
        model.services[svc.full_name] = {
            m.name: (m.input_type.full_name, m.output_type.full_name,
                     m.client_streaming, m.server_streaming)
            for m in svc.methods
        }
        for m in svc.methods:
            pending += [m.input_type, m.output_type]
    pending += [pool.FindMessageTypeByName(n) for n in gen.extra_roots]
    while pending:
        d = pending.pop()
        if d.full_name in model.messages:
            continue
        model.messages[d.full_name] = {f.number: _field_key(f) for f in d.fields}
        for f in d.fields:
            if f.message_type:
                pending.append(f.message_type)
            if f.enum_type:
                model.enums[f.enum_type.full_name] = {
                    v.name: v.number for v in f.enum_type.values}
        # Nested enums are part of their container's contract even when no field uses them.
        for e in d.enum_types:
            model.enums[e.full_name] = {v.name: v.number for v in e.values}
    return model


def declared(pool: descriptor_pool.DescriptorPool, files) -> Model:
    """Every flyteidl type declared in the given files, for the reverse check."""
    model = Model()

    def visit_msg(d):
        model.messages[d.full_name] = {f.number: _field_key(f) for f in d.fields}
        for n in d.nested_types:
            if not n.GetOptions().map_entry:
                visit_msg(n)
        for e in d.enum_types:
            model.enums[e.full_name] = {v.name: v.number for v in e.values}

    for name in files:
        f = pool.FindFileByName(name)
        for d in f.message_types_by_name.values():
            visit_msg(d)
        for e in f.enum_types_by_name.values():
            model.enums[e.full_name] = {v.name: v.number for v in e.values}
    return model


def _diff_maps(kind: str, ours: dict, theirs: dict, out: list[str]) -> None:
    for name in sorted(set(ours) | set(theirs)):
        if name not in ours:
            out.append(f"{kind} {name}: missing from ours")
        elif name not in theirs:
            out.append(f"{kind} {name}: not in flyteidl")
        elif ours[name] != theirs[name]:
            a, b = ours[name], theirs[name]
            for k in sorted(set(a) | set(b), key=str):
                if a.get(k) != b.get(k):
                    out.append(f"{kind} {name} [{k}]: ours={a.get(k)!r} flyteidl={b.get(k)!r}")


def diff(ours: Model, theirs: Model) -> list[str]:
    out: list[str] = []
    _diff_maps("service", ours.services, theirs.services, out)
    _diff_maps("message", ours.messages, theirs.messages, out)
    _diff_maps("enum", ours.enums, theirs.enums, out)
    return out


def pool_from_set(fds: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return pool


def official_pool(gen: Generation = V1) -> descriptor_pool.DescriptorPool:
    gen.load_official()
    return descriptor_pool.Default()


def compare_set(fds_bytes: bytes, gen: Generation = V1) -> list[str]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(fds_bytes)
    ours_pool = pool_from_set(fds)
    theirs_pool = official_pool(gen)
    problems = diff(walk(ours_pool, gen), walk(theirs_pool, gen))
    # Reverse check: whatever else we declare in this generation's files must match upstream.
    ours_declared = declared(ours_pool, [f.name for f in fds.file if f.name.startswith(gen.file_prefix)])
    theirs_all = Model()
    for name, fields in ours_declared.messages.items():
        try:
            d = theirs_pool.FindMessageTypeByName(name)
        except KeyError:
            problems.append(f"message {name}: not in flyteidl")
            continue
        theirs_all.messages[name] = {f.number: _field_key(f) for f in d.fields}
    for name in ours_declared.enums:
        try:
            e = theirs_pool.FindEnumTypeByName(name)
        except KeyError:
            problems.append(f"enum {name}: not in flyteidl")
            continue
        theirs_all.enums[name] = {v.name: v.number for v in e.values}
    problems += [p for p in diff(Model(messages={k: v for k, v in ours_declared.messages.items() if k in theirs_all.messages},
                                             enums={k: v for k, v in ours_declared.enums.items() if k in theirs_all.enums}),
                                       theirs_all) if p not in problems]
    return problems


if __name__ == "__main__":
    import sys

    data = open(sys.argv[1], "rb").read()
    problems = compare_set(data, V1) + compare_set(data, V2)
    for p in problems:
        print(p)
    print(f"{len(problems)} differences")
    sys.exit(1 if problems else 0)
