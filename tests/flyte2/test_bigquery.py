"""BigQuery, differential: for each flyte-sdk task, flyte-sdk's own connector and our agent
get the same CreateTaskRequest (the tenant's service-account key JSON in
`connection.secrets` under `google_application_credentials`; the agent pod has another
service account the emulator also knows). flyte-sdk's BigQuery client is captured at
`Client._call_api` (the jobs.insert body, its user agent, its credentials); ours reaches the
emulator, which exchanges service-account assertions for access tokens at `/token` (its
`token_uri`) and records each job's configuration, user agent and the account it ran as."""

from __future__ import annotations

import datetime
import json
import types
import urllib.request

import google.auth.transport.requests
import grpc
import pytest
from flyteidl2.connector import connector_pb2 as c2
from flyteplugins.bigquery.connector import BigQueryMetadata
from google.cloud import bigquery

import tasks
from conftest import (
    SUCCEEDED, Agent, Emulator, Ours, RsaKey, category, connection, create_error, create_request, harness, once_each, oracle,
    workspace_binary,
)

CASES = {
    "plain": (tasks.bigquery_plain, {}),
    "params": (tasks.bigquery_params, {"n": 42, "s": "it's", "f": 1.5, "b": True,
                                       "d": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)}),
    "secrets": (tasks.bigquery_secrets, {}),
}
TENANT, POD = "tenant@oracle-project.iam.gserviceaccount.com", "pod@platform.iam.gserviceaccount.com"


def key_json(email: str, key: RsaKey, token_uri: str) -> str:
    return json.dumps({"type": "service_account", "project_id": email.split("@")[1].split(".")[0],
                       "private_key_id": "k-" + email.split("@")[0], "private_key": key.pem, "client_email": email,
                       "client_id": "1", "token_uri": token_uri})


@pytest.fixture(scope="module")
def accounts(tmp_path_factory):
    d = tmp_path_factory.mktemp("bq-sa")
    out = types.SimpleNamespace(dir=d, keys={TENANT: RsaKey(), POD: RsaKey()})
    for email, key in out.keys.items():
        # The emulator reads the account and its key; the token_uri is set once it listens.
        (d / f"{email.split('@')[0]}.json").write_text(key_json(email, key, "http://unset/token"))
    return out


@pytest.fixture(scope="module")
def emulator(accounts):
    e = Emulator("bigquery", "--pending-ms", "50", "--running-ms", "150",
                 "--service-account", str(accounts.dir / "tenant.json"),
                 "--service-account", str(accounts.dir / "pod.json"))
    accounts.tenant = key_json(TENANT, accounts.keys[TENANT], f"{e.url}/token")
    # The key inside the JSON must never come back either (the JSON is one line).
    harness.remember_secrets({"_FSEC_TENANT_SERVICE_ACCOUNT_KEY": accounts.keys[TENANT].pem})
    accounts.pod_file = accounts.dir / "pod.json"
    accounts.pod_file.write_text(key_json(POD, accounts.keys[POD], f"{e.url}/token"))
    yield e
    e.stop()


@pytest.fixture(scope="module")
def agent(emulator, accounts):
    harness.remember_secrets({"_FSEC_POD_SERVICE_ACCOUNT": accounts.keys[POD].pem})
    a = Agent(workspace_binary("agent-bigquery"), env={
        "BIGQUERY_EMULATOR_HOST": emulator.host, "GOOGLE_APPLICATION_CREDENTIALS": str(accounts.pod_file)})
    yield a
    assert a.stop() == 0, a.logs()


def listing(emulator) -> dict:
    return json.loads(urllib.request.urlopen(f"{emulator.url}/_emulator/bigquery/jobs", timeout=5).read())


def emulator_job(emulator, job) -> dict:
    path = f"/bigquery/v2/projects/{job['project']}/jobs/{job['job_id']}?location={job['location']}"
    return json.loads(urllib.request.urlopen(f"{emulator.url}{path}", timeout=5).read())


def run_oracle_create(request):
    """flyte-sdk's CreateTask, its BigQuery client's API calls recorded."""
    seen = types.SimpleNamespace(calls=[])

    def call_api(self, retry, span_name=None, span_attributes=None, job_ref=None, headers=None, **kwargs):
        seen.calls.append(kwargs)
        seen.user_agent, seen.credentials = self._connection.user_agent, self._credentials
        if kwargs["method"] == "POST" and kwargs["path"].endswith("/jobs"):
            return {**kwargs["data"], "status": {"state": "PENDING"}}
        raise AssertionError(f"unexpected BigQuery call {kwargs['method']} {kwargs['path']}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bigquery.Client, "_call_api", call_api)
        seen.meta = oracle("CreateTask", request).resource_meta
    [insert] = seen.calls
    seen.insert = insert["data"]
    return seen


def run_oracle_get(request, sdk_meta: bytes, job_json: dict):
    """flyte-sdk's GetTask, its jobs.get answered with the emulator's view of `job_json`."""
    def call_api(self, retry, span_name=None, span_attributes=None, job_ref=None, headers=None, **kwargs):
        assert kwargs["method"] == "GET", kwargs
        return job_json

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bigquery.Client, "_call_api", call_api)
        return oracle("GetTask", c2.GetTaskRequest(
            resource_meta=sdk_meta, task_category=category(request.template), connection=request.connection)).resource


@pytest.fixture(scope="module")
def cases(agent, emulator, accounts):
    """Each case run once, on demand: flyte-sdk's create, ours, then flyte-sdk's get of the
    job ours made."""
    return once_each(lambda name: _run_case(name, agent, emulator, accounts))


def _run_case(name, agent, emulator, accounts):
    task, values = CASES[name]
    template, inputs = tasks.serialize(task, **values)
    request = create_request(template, inputs,
                             connection("bigquery_query_job_task", google_application_credentials=accounts.tenant))
    c = types.SimpleNamespace(request=request, sdk=run_oracle_create(request))
    c.sdk_job_id = BigQueryMetadata.decode(c.sdk.meta).job_id
    before = {j["job_id"] for j in listing(emulator)["jobs"]}
    c.ours = Ours(agent, request)
    new = [j for j in listing(emulator)["jobs"] if j["job_id"] not in before]
    assert len(new) == 1, f"{name}: our agent inserted {len(new)} jobs"
    c.job = new[0]
    job_json = emulator_job(emulator, c.job)
    job_json["jobReference"]["jobId"] = c.sdk_job_id
    c.sdk.resource = run_oracle_get(request, c.sdk.meta, job_json)
    return c


def swapped(c, text: str) -> str:
    """flyte-sdk's `text` with its job id replaced by our job's."""
    return text.replace(c.sdk_job_id, c.job["job_id"])


def query_config(query: dict) -> dict:
    """A query job's configuration, compared: parameters by name, values as the strings the
    API defines them as (flyte-sdk's client sends FLOAT64 as a JSON number), without the
    destination table BigQuery fills in."""
    q = {k: v for k, v in query.items() if k != "destinationTable"}
    if "queryParameters" in q:
        def param(p):
            v = p["parameterValue"]["value"]
            return {**p, "parameterValue": {"value": v if isinstance(v, str) else json.dumps(v)}}
        q["queryParameters"] = sorted((param(p) for p in q["queryParameters"]), key=lambda p: p["name"])
    return q


@pytest.mark.parametrize("case", CASES)
def test_the_same_query_job(cases, case):
    c = cases(case)
    assert query_config(c.job["configuration"]["query"]) == query_config(c.sdk.insert["configuration"]["query"])
    ref = c.sdk.insert["jobReference"]
    assert (c.job["project"], c.job["location"]) == (ref["projectId"], ref.get("location") or "US")


@pytest.mark.parametrize("case", CASES)
def test_the_same_user_agent(cases, case):
    c = cases(case)
    product = BigQueryMetadata.decode(c.sdk.meta).user_agent
    assert product == "Flyte/2.12.1 (GPN:Union;development)" and c.sdk.user_agent.startswith(product + " ")
    assert c.job["user_agent"].startswith(product), c.job["user_agent"]


@pytest.mark.parametrize("case", CASES)
def test_runs_as_the_connections_service_account(cases, emulator, case):
    c = cases(case)
    assert c.sdk.credentials.service_account_email == TENANT
    assert c.job["service_account"] != POD, "our job ran as the pod's service account"
    assert c.job["service_account"] == TENANT


@pytest.mark.parametrize("case", CASES)
def test_the_same_phase(cases, case):
    c = cases(case)
    assert c.ours.resource.phase == SUCCEEDED, c.ours.resource.message
    assert c.sdk.resource.phase == c.ours.resource.phase


@pytest.mark.parametrize("case", CASES)
def test_the_same_outputs(cases, case):
    c = cases(case)
    uris = lambda r: {o.name: o.value.scalar.structured_dataset.uri for o in r.outputs.literals}  # noqa: E731
    assert uris(c.ours.resource) == uris(c.sdk.resource)


@pytest.mark.parametrize("case", CASES)
def test_the_same_log_link(cases, case):
    c = cases(case)
    link = lambda l: (l.uri, l.name, l.link_type, l.ready)  # noqa: E731
    # A deliberate difference: for a task that names no Location, flyte-sdk links
    # `j=bq:None:<job>` (a page that does not open); we link the location BigQuery reports.
    fixed = lambda uri: uri.replace("j=bq:None:", f"j=bq:{c.job['location']}:")  # noqa: E731
    assert [link(l) for l in c.ours.resource.log_links] == [
        (fixed(swapped(c, l.uri)), l.name, l.link_type, l.ready) for l in c.sdk.resource.log_links]


@pytest.mark.parametrize("case", CASES)
def test_our_meta_decodes_as_flyte_sdks(cases, case):
    c = cases(case)
    ours = BigQueryMetadata.decode(c.ours.meta)  # strict: an unknown key raises
    assert ours.job_id == c.job["job_id"]
    sdk = BigQueryMetadata.decode(swapped(c, c.sdk.meta.decode()).encode())
    # The same deliberate difference: without a task Location, flyte-sdk keeps None and we
    # keep the location BigQuery reports, which later calls need outside the US.
    if sdk.location is None:
        sdk.location = c.job["location"]
    assert ours == sdk


def test_a_declared_credential_missing_from_the_request_is_refused(agent, emulator):
    template, inputs = tasks.serialize(tasks.bigquery_secrets)
    assert dict(template.custom["secrets"]) == {"google_application_credentials": "tenant-gcp-sa"}
    before = listing(emulator)["insert_requests"]
    err = create_error(agent, create_request(template, inputs))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    assert "google_application_credentials" in err.details()
    assert listing(emulator)["insert_requests"] == before


@pytest.mark.parametrize("case", CASES)
def test_the_oracle_itself(case, emulator, accounts):
    """flyte-sdk's side alone (it needs no agent): the job it would insert, and its
    credentials, which google-auth exchanges at the emulator's token endpoint as at Google's
    (so the endpoint our agent is checked against accepts the real client's grant)."""
    task, values = CASES[case]
    template, inputs = tasks.serialize(task, **values)
    sdk = run_oracle_create(create_request(
        template, inputs, connection("bigquery_query_job_task", google_application_credentials=accounts.tenant)))
    assert sdk.insert["configuration"]["query"]["query"] == template.sql.statement
    if case == "params":
        types_ = {p["name"]: p["parameterType"]["type"] for p in sdk.insert["configuration"]["query"]["queryParameters"]}
        assert types_ == {"n": "INT64", "s": "STRING", "f": "FLOAT64", "b": "BOOL", "d": "DATETIME"}
    before = listing(emulator)["token_requests"]
    sdk.credentials.refresh(google.auth.transport.requests.Request())
    assert sdk.credentials.token.startswith("ya29.") and listing(emulator)["token_requests"] == before + 1
