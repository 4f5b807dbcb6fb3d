"""Snowflake, differential: for each flyte-sdk task, flyte-sdk's own connector and our agent
get the same CreateTaskRequest (the tenant's private key in `connection.secrets` under
`snowflake_private_key`; the agent pod holds another key registered for the same user, as
Snowflake's RSA_PUBLIC_KEY_2). flyte-sdk talks to Snowflake through
`snowflake.connector.connect`, faked here to record the connection settings and the SQL the
real connector would execute after its client-side (pyformat) binding; ours reaches the SQL
API emulator, which records the statement, its bindings, its session settings and which
user and key signed it. Compared: the SQL Snowflake executes, once our `?` bindings are
rendered into SQL with the same connector code."""

from __future__ import annotations

import base64
import datetime
import json
import re
import time
import types
import urllib.request
import uuid

import grpc
import pytest
from flyteidl2.connector import connector_pb2 as c2
from flyteplugins.snowflake import connector as sdk_connector
from flyteplugins.snowflake.connector import SnowflakeJobMetadata
from snowflake.connector.connection import SnowflakeConnection
from snowflake.connector.constants import QueryStatus
from snowflake.connector.converter import SnowflakeConverter
from snowflake.connector.cursor import SnowflakeCursor

import tasks
from conftest import (
    SUCCEEDED, Agent, Emulator, Ours, RsaKey, category, connection, create_error, create_request, once_each, oracle,
    workspace_binary,
)

UTC = datetime.timezone.utc
CASES = {
    "plain": (tasks.snowflake_plain, {}),
    "params": (tasks.snowflake_params, {"id": 7, "name": "it's a \\ test", "score": 1.5, "active": True,
                                        "since": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)}),
    "batch": (tasks.snowflake_batch, {"id": [1, 2, 3], "name": ["ann", "o'brien", "zoë"]}),
    "secrets": (tasks.snowflake_secrets, {}),
    "passphrase": (tasks.snowflake_passphrase, {}),
    "role": (tasks.snowflake_role, {"region": "EMEA"}),
}
JWT_USER = f"{tasks.SNOWFLAKE_ACCOUNT}.{tasks.SNOWFLAKE_USER}".upper()
PASSPHRASE = "tenant-key-passphrase-31"


def tenant_connection(case: str, keys):
    """The tenant's credentials as a Flyte 2 backend sends them: the key (PEM), and for the
    passphrase case the key encrypted and its passphrase."""
    if case == "passphrase":
        return connection("snowflake", snowflake_private_key=keys.tenant.encrypted_pem(PASSPHRASE),
                          snowflake_private_key_passphrase=PASSPHRASE)
    return connection("snowflake", snowflake_private_key=keys.tenant.pem)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("sf-keys")
    tenant, pod = RsaKey(), RsaKey()
    for name, key in (("tenant", tenant), ("pod", pod)):
        (d / f"{name}.pub").write_text(key.public_pem)
    return types.SimpleNamespace(tenant=tenant, pod=pod, dir=d)


@pytest.fixture(scope="module")
def emulator(keys):
    e = Emulator("snowflake", "--user", f"{JWT_USER}={keys.dir / 'tenant.pub'}",
                 "--user", f"{JWT_USER}={keys.dir / 'pod.pub'}", "--running-ms", "150")
    yield e
    e.stop()


@pytest.fixture(scope="module")
def agent(emulator, keys):
    a = Agent(workspace_binary("agent-snowflake"), env={
        "SNOWFLAKE_BASE_URL": emulator.url, "_FSEC_SNOWFLAKE_PRIVATE_KEY": keys.pod.pem})
    yield a
    assert a.stop() == 0, a.logs()


def listing(emulator) -> dict:
    return json.loads(urllib.request.urlopen(f"{emulator.url}/_emulator/snowflake/statements", timeout=5).read())


# --- flyte-sdk's side: the connector module's `snowflake_connect`, faked ------------------

class _Connection:
    """Stands in for a SnowflakeConnection, borrowing the real class's client-side binding."""

    converter = SnowflakeConverter()
    _interpolate_empty_sequences = False
    _process_params_pyformat = SnowflakeConnection._process_params_pyformat
    _process_params_dict = SnowflakeConnection._process_params_dict
    _process_single_param = SnowflakeConnection._process_single_param

    def __init__(self, seen, query_id):
        self.seen, self.query_id = seen, query_id

    def cursor(self):
        return _Cursor(self)

    def get_query_status_throw_if_error(self, query_id):
        self.seen.status_of.append(query_id)
        return QueryStatus.SUCCESS

    def close(self):
        pass


class _Cursor:
    """Stands in for a SnowflakeCursor; `execute_async` renders the SQL as the real one does
    with the default pyformat paramstyle (`_preprocess_pyformat_query`)."""

    _preprocess_pyformat_query = SnowflakeCursor._preprocess_pyformat_query

    def __init__(self, conn):
        self._connection = self.connection = conn
        self.sfqid = None

    def _log_telemetry_job_data(self, *args, **kwargs):
        pass

    def execute_async(self, command, params=None):
        self.conn_seen().executed.append((command, params, self._preprocess_pyformat_query(command, params)))
        self.sfqid = self._connection.query_id

    def conn_seen(self):
        return self._connection.seen

    def close(self):
        pass


def run_oracle(request, query_id: str):
    seen = types.SimpleNamespace(connects=[], executed=[], status_of=[])

    def connect(**kwargs):
        seen.connects.append(kwargs)
        return _Connection(seen, query_id)

    # The connector caches connections by their settings; each case starts afresh.
    sdk_connector._get_snowflake_connection.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sdk_connector, "snowflake_connect", connect)
        seen.meta = oracle("CreateTask", request).resource_meta
        seen.resource = oracle("GetTask", c2.GetTaskRequest(
            resource_meta=seen.meta, task_category=category(request.template), connection=request.connection)).resource
    return seen


# --- our side: the SQL the emulator was sent, its bindings rendered as SQL ----------------

def binding_value(b: dict):
    """A SQL API binding as the Python value it stands for."""
    ty, v = b["type"], b.get("value")
    if v is None:
        return None
    if ty == "FIXED":
        return int(v)
    if ty == "REAL":
        return float(v)
    if ty == "BOOLEAN":
        return {"true": True, "false": False}[str(v).lower()]
    if ty == "BINARY":
        return bytes.fromhex(v)
    if ty.startswith("TIMESTAMP"):
        # Nanoseconds since the epoch (TIMESTAMP_TZ adds " <offset minutes + 1440>").
        ns, _, offset = str(v).partition(" ")
        tz = datetime.timezone(datetime.timedelta(minutes=int(offset) - 1440)) if offset else UTC
        return datetime.datetime.fromtimestamp(int(ns) / 1e9, tz=UTC).astimezone(tz)
    if ty == "TEXT":
        return v
    raise AssertionError(f"a binding type the oracle does not render: {ty}")


def rendered(statement: str, bindings: dict) -> str:
    """`statement` with each `?` (outside quotes) replaced by its binding, quoted as the
    Snowflake connector quotes a client-side parameter."""
    conn = _Connection(None, None)
    values = [conn._process_single_param(binding_value(bindings[str(i + 1)])) for i in range(len(bindings))]
    out, quote, n = [], None, 0
    for ch in statement:
        if quote is not None:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            out.append(str(values[n]))
            n += 1
            continue
        out.append(ch)
    assert n == len(values), f"{len(values)} bindings for {n} placeholders"
    return "".join(out)


@pytest.fixture(scope="module")
def cases(agent, emulator, keys):
    """Each case run once, on demand: flyte-sdk first (its query id a placeholder, which the
    comparisons swap for our statement's handle), then our agent."""
    return once_each(lambda name: _run_case(name, agent, emulator, keys))


def _run_case(name, agent, emulator, keys):
    task, values = CASES[name]
    template, inputs = tasks.serialize(task, **values)
    request = create_request(template, inputs, tenant_connection(name, keys))
    placeholder = str(uuid.uuid4())
    sdk = run_oracle(request, placeholder)
    c = types.SimpleNamespace(request=request, sdk=sdk, placeholder=placeholder)
    before = {s["handle"] for s in listing(emulator)["statements"]}
    c.ours = Ours(agent, request)
    new = [s for s in listing(emulator)["statements"] if s["handle"] not in before]
    assert len(new) == 1, f"{name}: our agent submitted {len(new)} statements"
    c.statement = new[0]
    return c


def swapped(c, text: str) -> str:
    """flyte-sdk's `text` with its placeholder query id replaced by our statement handle."""
    return text.replace(c.placeholder, c.statement["handle"])


@pytest.mark.parametrize("case", CASES)
def test_snowflake_executes_the_same_sql(cases, case):
    c = cases(case)
    [(_, _, sdk_sql)] = c.sdk.executed
    body = c.statement["request"]
    assert rendered(body["statement"], body.get("bindings") or {}) == sdk_sql


@pytest.mark.parametrize("case", CASES)
def test_the_same_session(cases, case):
    c = cases(case)
    [sdk] = c.sdk.connects
    body = c.statement["request"]
    keys = ("database", "schema", "warehouse", "role")
    assert {k: body.get(k) or None for k in keys} == {k: sdk.get(k) for k in keys}
    assert c.statement["auth"]["user"] == f"{sdk['account']}.{sdk['user']}".upper()


@pytest.mark.parametrize("case", CASES)
def test_signed_with_the_connections_key(cases, keys, case):
    c = cases(case)
    [sdk] = c.sdk.connects
    assert sdk["private_key"] == keys.tenant.der
    fingerprint = c.statement["auth"]["fingerprint"]
    assert fingerprint != keys.pod.fingerprint, "our agent signed with the pod's key, not the connection's"
    assert fingerprint == keys.tenant.fingerprint


@pytest.mark.parametrize("case", CASES)
def test_the_same_phase(cases, case):
    c = cases(case)
    assert c.ours.resource.phase == SUCCEEDED, c.ours.resource.message
    assert c.sdk.resource.phase == c.ours.resource.phase


@pytest.mark.parametrize("case", CASES)
def test_the_same_outputs(cases, case):
    c = cases(case)
    uris = lambda r: {o.name: o.value.scalar.structured_dataset.uri for o in r.outputs.literals}  # noqa: E731
    assert uris(c.ours.resource) == {k: swapped(c, v) for k, v in uris(c.sdk.resource).items()}


@pytest.mark.parametrize("case", CASES)
def test_the_same_log_link(cases, case):
    c = cases(case)
    link = lambda l: (l.uri, l.name, l.link_type, l.ready)  # noqa: E731
    assert [link(l) for l in c.ours.resource.log_links] == [
        (swapped(c, l.uri), l.name, l.link_type, l.ready) for l in c.sdk.resource.log_links]


@pytest.mark.parametrize("case", CASES)
def test_our_meta_decodes_as_flyte_sdks(cases, case):
    c = cases(case)
    ours = SnowflakeJobMetadata.decode(c.ours.meta)  # strict: an unknown key raises
    assert ours.query_id == c.statement["handle"]
    assert ours == SnowflakeJobMetadata.decode(swapped(c, c.sdk.meta.decode()).encode())


def test_a_declared_key_missing_from_the_request_is_refused(agent, emulator, keys):
    template, inputs = tasks.serialize(tasks.snowflake_secrets)
    assert dict(template.custom["secrets"]) == {"snowflake_private_key": "TENANT_PRIVATE_KEY"}
    before = listing(emulator)["submit_requests"]
    err = create_error(agent, create_request(template, inputs))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    assert "snowflake_private_key" in err.details()
    # A declared passphrase, too: the key alone (encrypted) is not enough.
    template, inputs = tasks.serialize(tasks.snowflake_passphrase)
    conn = connection("snowflake", snowflake_private_key=keys.tenant.encrypted_pem(PASSPHRASE))
    err = create_error(agent, create_request(template, inputs, conn))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    assert "snowflake_private_key_passphrase" in err.details()
    assert listing(emulator)["submit_requests"] == before


def test_the_renderer_quotes_as_the_connector_does():
    """The oracle's own check: a binding of each type renders as the connector renders
    the native value it stands for."""
    conn = _Connection(None, None)
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    bindings = {"1": {"type": "FIXED", "value": "-3"}, "2": {"type": "TEXT", "value": "a'b\\c"},
                "3": {"type": "REAL", "value": "0.1"}, "4": {"type": "BOOLEAN", "value": "false"},
                "5": {"type": "TIMESTAMP_LTZ", "value": str(int(when.timestamp()) * 10**9 + 6000 * 1000)},
                "6": {"type": "TEXT", "value": None}}
    expected = "SELECT '?', %s, %s, %s, %s, %s, %s" % tuple(
        conn._process_single_param(v) for v in (-3, "a'b\\c", 0.1, False, when, None))
    assert rendered("SELECT '?', ?, ?, ?, ?, ?, ?", bindings) == expected


@pytest.mark.parametrize("case", CASES)
def test_the_oracle_itself(case, keys):
    """flyte-sdk's side alone (it needs no agent): one connection with the tenant's key,
    one statement, the expected batch expansion."""
    task, values = CASES[case]
    template, inputs = tasks.serialize(task, **values)
    sdk = run_oracle(create_request(template, inputs, tenant_connection(case, keys)),
                     "01b2c3d4-0000-0000-0000-000000000001")
    assert len(sdk.connects) == 1 and len(sdk.executed) == 1 and sdk.resource.phase == SUCCEEDED
    assert sdk.connects[0]["private_key"] == keys.tenant.der
    if case == "batch":
        assert sdk.executed[0][2] == "INSERT INTO people (id, name) VALUES (1, 'ann'), (2, 'o\\'brien'), (3, 'zoë')"


def _jwt(key: RsaKey) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    now = int(time.time())
    signing = enc({"alg": "RS256", "typ": "JWT"}) + "." + enc(
        {"iss": f"{JWT_USER}.{key.fingerprint}", "sub": JWT_USER, "iat": now, "exp": now + 300})
    sig = key.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def _typed(v) -> dict:
    if isinstance(v, bool):
        return {"type": "BOOLEAN", "value": str(v).lower()}
    if isinstance(v, int):
        return {"type": "FIXED", "value": str(v)}
    if isinstance(v, float):
        return {"type": "REAL", "value": repr(v)}
    if isinstance(v, datetime.datetime):
        return {"type": "TIMESTAMP_LTZ", "value": str(int(v.timestamp()) * 10**9 + v.microsecond * 1000)}
    return {"type": "TEXT", "value": v}


@pytest.mark.parametrize("case", ["params", "batch"])
def test_the_comparisons_pass_a_statement_made_as_flyte_sdk_makes_it(case, emulator, keys):
    """A control for the oracle: a SQL API request made by hand from flyte-sdk's own query and
    parameters (each `%(name)s` a `?` with a typed binding), signed with the tenant's key,
    passes the comparisons our agent's statements face; so a failure above is the agent's."""
    task, values = CASES[case]
    template, inputs = tasks.serialize(task, **values)
    sdk = run_oracle(create_request(template, inputs, tenant_connection(case, keys)), str(uuid.uuid4()))
    [(query, params, sdk_sql)] = sdk.executed
    names = re.findall(r"%\((\w+)\)s", query)
    body = {"statement": re.sub(r"%\((\w+)\)s", "?", query),
            "bindings": {str(i + 1): _typed(params[n]) for i, n in enumerate(names)},
            **{k: sdk.connects[0][k] for k in ("database", "schema", "warehouse")}}
    req = urllib.request.Request(f"{emulator.url}/api/v2/statements?async=true", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {_jwt(keys.tenant)}",
                                          "X-Snowflake-Authorization-Token-Type": "KEYPAIR_JWT"})
    handle = json.loads(urllib.request.urlopen(req, timeout=5).read())["statementHandle"]
    [statement] = [s for s in listing(emulator)["statements"] if s["handle"] == handle]
    assert rendered(statement["request"]["statement"], statement["request"]["bindings"]) == sdk_sql
    assert statement["auth"] == {"user": JWT_USER, "fingerprint": keys.tenant.fingerprint}
