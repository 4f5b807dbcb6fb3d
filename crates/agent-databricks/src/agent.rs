//! The Databricks agent: `create` submits a one-time run, `get` maps its state, `delete`
//! cancels it. Tokens never enter the resource meta and only go to allowed instances.

use reqwest::Method;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value as Json, json};

use agent_core::prelude::*;

use crate::auth::{Auth, AuthType, checked_token_file};
use agent_core::http::HttpError;

use crate::client::{Client, Workspace, is_missing_run, to_agent_error};
use crate::config::Config;
use crate::spec::job_spec;

/// The job handle. Reads every form flytekit's agent wrote (2, 3 or 10 keys); writes the
/// 1.16.31 keys except `auth_token`, which is read (for runs the Python agent started) but
/// never written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabricksMeta {
    /// Host (and port) of the workspace.
    pub databricks_instance: String,
    /// Run id, a string as flytekit stores it (numbers are accepted).
    #[serde(deserialize_with = "string_or_number")]
    pub run_id: String,
    /// A PAT stored by the Python agent; used for its run only.
    #[serde(default, skip_serializing)]
    pub auth_token: Option<Secret>,
    /// `pat`, `oauth_m2m` or `oidc_federation`.
    #[serde(default)]
    pub auth_type: Option<String>,
    /// OAuth client id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Name of the per-namespace OAuth secret.
    #[serde(default)]
    pub oauth_secret_name: Option<String>,
    /// Federation JWT file.
    #[serde(default)]
    pub oidc_token_file: Option<String>,
    /// Federated service account (discovered per namespace by the Python agent).
    #[serde(default)]
    pub oidc_service_account: Option<String>,
    /// Federation audience.
    #[serde(default)]
    pub oidc_audience: Option<String>,
    /// Workflow namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Json::deserialize(d)? {
        Json::String(s) => Ok(s),
        Json::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("run_id must be a string or a number, got {other}"))),
    }
}

impl DatabricksMeta {
    /// The auth the run was started with. A meta is input like any other: the token file
    /// it names must be the agent's own (see [`checked_token_file`]).
    fn auth(&self, config: &Config) -> Result<Auth, AgentError> {
        Ok(Auth {
            kind: AuthType::parse(self.auth_type.as_deref().unwrap_or("pat"))?,
            client_id: self.client_id.clone(),
            oauth_secret_name: self.oauth_secret_name.clone(),
            oidc_token_file: checked_token_file(
                self.oidc_token_file.as_deref(),
                config,
                "resource meta: oidc_token_file",
            )?,
            oidc_audience: self.oidc_audience.clone(),
            namespace: self.namespace.clone().unwrap_or_default(),
            stored_token: self.auth_token.clone(),
        })
    }
}

/// The agent.
#[derive(Debug)]
pub struct DatabricksAgent {
    client: Client,
    config: Config,
    categories: Vec<TaskCategory>,
}

impl DatabricksAgent {
    /// The agent for both of flytekit's task types, `spark` (the `Databricks` config) and
    /// `databricks` (`DatabricksV2`).
    pub fn new(config: Config) -> Result<Self, String> {
        config.validate()?;
        let client = Client::new(&config)?;
        Ok(Self { client, config, categories: vec![TaskCategory::new("spark", 0), TaskCategory::new("databricks", 0)] })
    }

    /// Only instances on the allowlist get credentials; anything else is refused before a
    /// byte is sent.
    fn check_instance(&self, raw: &str) -> Result<String, AgentError> {
        let instance = normalize(raw);
        let allowed = self.config.trusted_instances();
        if allowed.iter().any(|a| a.eq_ignore_ascii_case(&instance)) {
            Ok(instance)
        } else {
            Err(AgentError::permission_denied(format!(
                "Databricks instance '{instance}' is not allowed: this agent sends credentials only to {} \
                 (setting databricks.allowed_instances)",
                if allowed.is_empty() { "no instance at all".to_owned() } else { allowed.join(", ") }
            )))
        }
    }
}

/// The run id of a meta, checked before it goes into a request: Databricks' run ids are
/// integers, so anything else was not written by a Databricks agent.
fn checked_run_id(run_id: &str) -> Result<&str, AgentError> {
    if !run_id.is_empty() && run_id.len() <= 20 && run_id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(run_id)
    } else {
        Err(AgentError::invalid_argument(
            "resource meta: run_id is not a Databricks run id (an integer); the meta was not written by a \
             Databricks agent",
        ))
    }
}

pub(crate) fn normalize(instance: &str) -> String {
    instance.trim().trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/').to_owned()
}

/// An idempotency token per task attempt: a repeated submit returns the same run.
fn idempotency_token(task: &TaskRequest) -> Option<String> {
    task.attempt_id("databricks").map(|id| format!("flyte-{}", id.simple()))
}

/// Databricks' `life_cycle_state`.
#[derive(Debug, PartialEq, Eq)]
enum LifeCycle<'a> {
    Queued,
    Pending,
    Running,
    Terminating,
    Terminated,
    Skipped,
    InternalError,
    Blocked,
    WaitingForRetry,
    Unknown(&'a str),
}

impl<'a> LifeCycle<'a> {
    fn parse(s: &'a str) -> Self {
        match s {
            "QUEUED" => Self::Queued,
            "PENDING" => Self::Pending,
            "RUNNING" => Self::Running,
            "TERMINATING" => Self::Terminating,
            "TERMINATED" => Self::Terminated,
            "SKIPPED" => Self::Skipped,
            "INTERNAL_ERROR" => Self::InternalError,
            "BLOCKED" => Self::Blocked,
            "WAITING_FOR_RETRY" => Self::WaitingForRetry,
            other => Self::Unknown(other),
        }
    }
}

/// Databricks' `result_state`.
#[derive(Debug, PartialEq, Eq)]
enum ResultState<'a> {
    Success,
    Failed,
    TimedOut,
    Canceled,
    SuccessWithFailures,
    UpstreamFailed,
    UpstreamCanceled,
    Excluded,
    Disabled,
    MaximumConcurrentRunsReached,
    Unknown(&'a str),
}

impl<'a> ResultState<'a> {
    fn parse(s: &'a str) -> Self {
        match s {
            "SUCCESS" => Self::Success,
            "FAILED" => Self::Failed,
            "TIMEDOUT" => Self::TimedOut,
            "CANCELED" => Self::Canceled,
            "SUCCESS_WITH_FAILURES" => Self::SuccessWithFailures,
            "UPSTREAM_FAILED" => Self::UpstreamFailed,
            "UPSTREAM_CANCELED" => Self::UpstreamCanceled,
            "EXCLUDED" => Self::Excluded,
            "DISABLED" => Self::Disabled,
            "MAXIMUM_CONCURRENT_RUNS_REACHED" => Self::MaximumConcurrentRunsReached,
            other => Self::Unknown(other),
        }
    }
}

/// The newer `status.termination_details.type`.
#[derive(Debug, PartialEq, Eq)]
enum TerminationType<'a> {
    Success,
    InternalError,
    ClientError,
    CloudFailure,
    Unknown(&'a str),
}

impl<'a> TerminationType<'a> {
    fn parse(s: &'a str) -> Self {
        match s {
            "SUCCESS" => Self::Success,
            "INTERNAL_ERROR" => Self::InternalError,
            "CLIENT_ERROR" => Self::ClientError,
            "CLOUD_FAILURE" => Self::CloudFailure,
            other => Self::Unknown(other),
        }
    }
}

/// Termination codes that mean "no capacity right now": worth a retry.
const CAPACITY_CODES: &[&str] = &[
    "MAX_CONCURRENT_RUNS_EXCEEDED",
    "MAX_JOB_QUEUE_SIZE_EXCEEDED",
    "WORKSPACE_RUN_LIMIT_EXCEEDED",
    "CLUSTER_REQUEST_LIMIT_EXCEEDED",
];

fn str_at<'a>(v: &'a Json, path: &str) -> Option<&'a str> {
    v.pointer(path).and_then(Json::as_str)
}

/// The phase of a run from `runs/get`. Unknown values keep the task running with a
/// message: Databricks adds states, and a task must not fail because the agent is older.
fn phase_of(run: &Json) -> (Phase, String) {
    let message = str_at(run, "/state/state_message")
        .filter(|m| !m.is_empty())
        .or_else(|| str_at(run, "/status/termination_details/message"))
        .unwrap_or_default()
        .to_owned();
    // A terminated run's `status` says whose fault it was, which `result_state` does not.
    if let Some(ty) = str_at(run, "/status/termination_details/type") {
        let code = str_at(run, "/status/termination_details/code").unwrap_or_default();
        let phase = match (TerminationType::parse(ty), code) {
            (_, "CANCELED" | "USER_CANCELED") => Some(Phase::Aborted),
            (TerminationType::Success, _) => match str_at(run, "/state/result_state").map(ResultState::parse) {
                // A successful termination type with a failing result (e.g. SUCCESS_WITH_FAILURES)
                // is decided by the result below.
                Some(ResultState::Success) | None => Some(Phase::Succeeded),
                Some(_) => None,
            },
            (TerminationType::InternalError | TerminationType::CloudFailure, _) => Some(Phase::RetryableFailed),
            (TerminationType::ClientError, c) if CAPACITY_CODES.contains(&c) => Some(Phase::RetryableFailed),
            (TerminationType::ClientError, _) => Some(Phase::Failed),
            (TerminationType::Unknown(_), _) => None,
        };
        if let Some(p) = phase {
            return (p, if message.is_empty() { code.to_owned() } else { message });
        }
    }
    let life = str_at(run, "/state/life_cycle_state").or_else(|| str_at(run, "/status/state")).unwrap_or_default();
    let phase = match LifeCycle::parse(life) {
        LifeCycle::Queued | LifeCycle::Blocked => Phase::Queued,
        LifeCycle::Pending => Phase::Initializing,
        LifeCycle::Running | LifeCycle::Terminating | LifeCycle::WaitingForRetry => Phase::Running,
        LifeCycle::Skipped => Phase::Failed,
        LifeCycle::InternalError => Phase::RetryableFailed,
        LifeCycle::Terminated => match str_at(run, "/state/result_state").map(ResultState::parse) {
            Some(ResultState::Success) => Phase::Succeeded,
            Some(
                ResultState::Failed
                | ResultState::TimedOut
                | ResultState::SuccessWithFailures
                | ResultState::UpstreamFailed
                | ResultState::Excluded
                | ResultState::Disabled,
            ) => Phase::Failed,
            Some(ResultState::Canceled | ResultState::UpstreamCanceled) => Phase::Aborted,
            Some(ResultState::MaximumConcurrentRunsReached) => Phase::RetryableFailed,
            Some(ResultState::Unknown(r)) => {
                return (
                    Phase::Running,
                    format!("Databricks reports result state '{r}', which this agent does not know"),
                );
            }
            None => return (Phase::Running, "the run terminated; waiting for its result".into()),
        },
        LifeCycle::Unknown(s) => {
            return (
                Phase::Running,
                format!("Databricks reports life cycle state '{s}', which this agent does not know"),
            );
        }
    };
    (phase, message)
}

fn console_link(run: &Json, instance: &str, run_id: &str) -> LogLink {
    let uri = match run.get("run_page_url").and_then(Json::as_str).filter(|u| !u.is_empty()) {
        Some(u) => u.to_owned(),
        None => {
            let job =
                run.get("job_id").map(|j| j.as_str().map_or_else(|| j.to_string(), str::to_owned)).unwrap_or_default();
            format!("https://{instance}/#job/{job}/run/{run_id}")
        }
    };
    LogLink::new("Databricks Console", uri)
}

impl AsyncAgent for DatabricksAgent {
    type Meta = DatabricksMeta;

    fn name(&self) -> &str {
        "Databricks Connector"
    }

    fn task_categories(&self) -> Vec<TaskCategory> {
        self.categories.clone()
    }

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<DatabricksMeta, AgentError> {
        let custom = task.custom();
        let raw_instance = custom
            .get("databricksInstance")
            .and_then(Json::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
            .or_else(|| self.config.default_instance.clone())
            .ok_or_else(|| {
                AgentError::invalid_argument(
                    "template.custom.databricksInstance: missing; set databricks_instance on the task config or \
                     FLYTE_DATABRICKS_INSTANCE on the agent",
                )
            })?;
        let instance = self.check_instance(&raw_instance)?;
        let namespace = task.metadata.as_ref().map(|m| m.namespace.clone()).unwrap_or_default();
        let auth = Auth::for_task(&custom, &self.config, &namespace)?;
        let mut spec = job_spec(&task, &custom, self.config.service_credential_provider.as_deref())?;
        // Tokens starting `flyte-` are the agent's (one per task attempt): a task that chose
        // one could make another task's CreateTask adopt a run it prepared.
        if spec.get("idempotency_token").and_then(Json::as_str).is_some_and(|t| t.starts_with("flyte-")) {
            return Err(AgentError::invalid_argument(
                "template.custom.databricksConf.idempotency_token: tokens starting with 'flyte-' are the agent's own \
                 (one per task attempt); choose another or leave it unset",
            ));
        }
        if !spec.contains_key("idempotency_token")
            && let Some(t) = idempotency_token(&task)
        {
            spec.insert("idempotency_token".into(), json!(t));
        }
        let body = Json::Object(spec);
        let answer = self
            .client
            .call(ctx, Workspace { instance: &instance, auth: &auth }, Method::POST, "runs/submit", None, Some(&body))
            .await
            .map_err(|e| to_agent_error(e, "runs/submit"))?;
        let run_id = match answer.get("run_id") {
            Some(Json::Number(n)) => n.to_string(),
            Some(Json::String(s)) => s.clone(),
            _ => return Err(AgentError::internal("Databricks runs/submit answered without a run_id")),
        };
        Ok(DatabricksMeta {
            databricks_instance: instance,
            run_id,
            auth_token: None,
            auth_type: Some(auth.kind.as_str().to_owned()),
            client_id: auth.client_id,
            oauth_secret_name: auth.oauth_secret_name,
            oidc_token_file: auth.oidc_token_file,
            oidc_service_account: None,
            oidc_audience: auth.oidc_audience,
            namespace: Some(namespace),
        })
    }

    async fn get(&self, ctx: &Context, meta: DatabricksMeta) -> Result<Resource, AgentError> {
        // A meta is input like any other: a forged one must not redirect credentials.
        checked_run_id(&meta.run_id)?;
        let instance = self.check_instance(&meta.databricks_instance)?;
        let auth = meta.auth(&self.config)?;
        match self
            .client
            .call(
                ctx,
                Workspace { instance: &instance, auth: &auth },
                Method::GET,
                "runs/get",
                Some(("run_id", &meta.run_id)),
                None,
            )
            .await
        {
            Ok(run) => {
                let (phase, message) = phase_of(&run);
                let mut link = console_link(&run, &instance, &meta.run_id);
                // A token stored in a Python agent's meta is this request's value, which the
                // process-wide scrubber does not know: the service's text is scrubbed of it here.
                let (message, uri) = match &auth.stored_token {
                    Some(t) => (t.scrub_from(&message), t.scrub_from(&link.uri)),
                    None => (message, link.uri.clone()),
                };
                link.uri = uri;
                Ok(Resource::new(phase).with_message(message).with_log_link(link))
            }
            Err(e) if is_missing_run(&e) => {
                Ok(Resource::failed(format!("Databricks has no run {} on {instance}: {}", meta.run_id, e.describe())))
            }
            Err(e) if e.is_transient() => Ok(Resource::unreachable("Databricks", "run", &e.describe())),
            Err(e) => Err(to_agent_error(e, "runs/get")),
        }
    }

    async fn delete(&self, ctx: &Context, meta: DatabricksMeta) -> Result<(), AgentError> {
        checked_run_id(&meta.run_id)?;
        let instance = self.check_instance(&meta.databricks_instance)?;
        let auth = meta.auth(&self.config)?;
        let body = json!({"run_id": meta.run_id});
        match self
            .client
            .call(ctx, Workspace { instance: &instance, auth: &auth }, Method::POST, "runs/cancel", None, Some(&body))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_missing_run(&e) => Ok(()),
            Err(HttpError::Agent(e)) => Err(e),
            Err(e) => Err(to_agent_error(e, "runs/cancel")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(life: &str, result: Option<&str>, termination: Option<(&str, &str)>) -> Json {
        let mut r = json!({"job_id": 1, "run_id": 123, "state": {"life_cycle_state": life, "state_message": "msg"}});
        if let Some(res) = result {
            r["state"]["result_state"] = json!(res);
        }
        if let Some((code, ty)) = termination {
            r["status"] = json!({"state": "TERMINATED", "termination_details": {"code": code, "type": ty}});
        }
        r
    }

    #[test]
    fn life_cycle_and_result_states_map_exhaustively() {
        let cases = [
            ("QUEUED", None, Phase::Queued),
            ("BLOCKED", None, Phase::Queued),
            ("PENDING", None, Phase::Initializing),
            ("RUNNING", None, Phase::Running),
            ("TERMINATING", None, Phase::Running),
            ("WAITING_FOR_RETRY", None, Phase::Running),
            ("SKIPPED", None, Phase::Failed),
            ("INTERNAL_ERROR", None, Phase::RetryableFailed),
            ("TERMINATED", Some("SUCCESS"), Phase::Succeeded),
            ("TERMINATED", Some("FAILED"), Phase::Failed),
            ("TERMINATED", Some("TIMEDOUT"), Phase::Failed),
            ("TERMINATED", Some("CANCELED"), Phase::Aborted),
            ("TERMINATED", Some("SUCCESS_WITH_FAILURES"), Phase::Failed),
            ("TERMINATED", Some("UPSTREAM_FAILED"), Phase::Failed),
            ("TERMINATED", Some("UPSTREAM_CANCELED"), Phase::Aborted),
            ("TERMINATED", Some("EXCLUDED"), Phase::Failed),
            ("TERMINATED", Some("DISABLED"), Phase::Failed),
            ("TERMINATED", Some("MAXIMUM_CONCURRENT_RUNS_REACHED"), Phase::RetryableFailed),
            ("TERMINATED", Some("SOMETHING_NEW"), Phase::Running),
            ("TERMINATED", None, Phase::Running),
            ("HIBERNATING", None, Phase::Running),
        ];
        for (life, result, phase) in cases {
            assert_eq!(phase_of(&run(life, result, None)).0, phase, "{life} {result:?}");
        }
        assert!(phase_of(&run("HIBERNATING", None, None)).1.contains("HIBERNATING"));
        assert_eq!(phase_of(&run("TERMINATED", Some("SUCCESS"), None)).1, "msg");
    }

    #[test]
    fn termination_details_decide_whose_fault_it_was() {
        let cases = [
            (("SUCCESS", "SUCCESS"), Some("SUCCESS"), Phase::Succeeded),
            (("CLOUD_FAILURE", "CLOUD_FAILURE"), Some("FAILED"), Phase::RetryableFailed),
            (("INTERNAL_ERROR", "INTERNAL_ERROR"), Some("FAILED"), Phase::RetryableFailed),
            (("RUN_EXECUTION_ERROR", "CLIENT_ERROR"), Some("FAILED"), Phase::Failed),
            (("MAX_CONCURRENT_RUNS_EXCEEDED", "CLIENT_ERROR"), Some("FAILED"), Phase::RetryableFailed),
            (("USER_CANCELED", "SUCCESS"), Some("CANCELED"), Phase::Aborted),
            (("SUCCESS", "SUCCESS"), Some("SUCCESS_WITH_FAILURES"), Phase::Failed),
            (("NEW_CODE", "NEW_TYPE"), Some("FAILED"), Phase::Failed),
        ];
        for ((code, ty), result, phase) in cases {
            assert_eq!(phase_of(&run("TERMINATED", result, Some((code, ty)))).0, phase, "{code} {ty} {result:?}");
        }
    }

    #[test]
    fn metas_of_every_python_version_decode_and_tokens_are_never_written() {
        let v1 = r#"{"databricks_instance": "a.cloud.databricks.com", "run_id": "123"}"#;
        let v2 = r#"{"databricks_instance": "a.cloud.databricks.com", "run_id": "123", "auth_token": "dapi-secret-1"}"#;
        let v3 = r#"{"databricks_instance": "127.0.0.1:18443", "run_id": "123", "auth_token": "dapi-test", "auth_type": "pat", "client_id": null, "oauth_secret_name": "databricks-oauth", "oidc_token_file": null, "oidc_service_account": null, "oidc_audience": null, "namespace": ""}"#;
        for raw in [v1, v2, v3] {
            let m: DatabricksMeta = serde_json::from_str(raw).unwrap();
            assert_eq!(m.run_id, "123");
            let out = serde_json::to_string(&m).unwrap();
            assert!(!out.contains("auth_token") && !out.contains("dapi-"), "{out}");
            assert!(!format!("{m:?}").contains("dapi-"));
            assert_eq!(m.auth(&Config::default()).unwrap().kind, AuthType::Pat);
        }
        let m: DatabricksMeta = serde_json::from_str(v2).unwrap();
        assert_eq!(m.auth(&Config::default()).unwrap().stored_token.unwrap().expose(), "dapi-secret-1");
        let numeric: DatabricksMeta = serde_json::from_str(r#"{"databricks_instance": "a", "run_id": 77}"#).unwrap();
        assert_eq!(numeric.run_id, "77");
    }

    #[test]
    fn only_allowlisted_instances_get_credentials() {
        let agent = |default: Option<&str>, allowed: &[&str]| {
            DatabricksAgent::new(Config {
                default_instance: default.map(str::to_owned),
                allowed_instances: allowed.iter().map(|s| (*s).to_owned()).collect(),
                ..Config::default()
            })
            .unwrap()
        };
        let a = agent(Some("mine.cloud.databricks.com"), &[]);
        assert_eq!(a.check_instance("https://MINE.cloud.databricks.com/").unwrap(), "MINE.cloud.databricks.com");
        let err = a.check_instance("evil.example.com").unwrap_err();
        assert!(
            matches!(&err, AgentError::PermissionDenied(m) if m.contains("evil.example.com") && m.contains("mine.cloud.databricks.com"))
        );
        let b = agent(Some("mine"), &["one", "two:8443"]);
        assert!(b.check_instance("two:8443").is_ok() && b.check_instance("mine").is_err());
        assert!(agent(None, &[]).check_instance("any").is_err());
    }
}
