//! The Databricks agent: `create` submits a one-time run, `get` maps its state, `delete`
//! cancels it. Tokens never enter the resource meta and only go to allowed instances.

use agent_core::http::Failure;
use agent_core::prelude::*;
use reqwest::Method;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value as Json, json};

use crate::auth::{AuthType, Credentials, checked_token_file};
use crate::client::{Client, SERVICE};
use crate::config::Config;
use crate::spec::job_spec;

/// The task type of flytekit's `DatabricksV2` config.
pub(crate) const TASK_TYPE: &str = "databricks";
/// The task type of flytekit's older `Databricks` config, served alike.
pub(crate) const SPARK_TASK_TYPE: &str = "spark";

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

fn text(custom: &Map<String, Json>, key: &str) -> Option<String> {
    custom.get(key).and_then(Json::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

impl DatabricksMeta {
    /// The meta of a run about to be submitted (its `run_id` still empty): the auth
    /// settings from the task's `custom`, else the agent's, else flytekit's defaults.
    fn for_task(
        custom: &Map<String, Json>,
        config: &Config,
        instance: String,
        namespace: &str,
    ) -> Result<Self, AgentError> {
        let kind =
            text(custom, "databricksAuthType").or_else(|| config.auth_type.as_deref().map(|k| k.trim().to_owned()));
        let file = text(custom, "databricksOidcTokenFile");
        Ok(Self {
            databricks_instance: instance,
            run_id: String::new(),
            auth_token: None,
            auth_type: Some(AuthType::parse(kind.as_deref().unwrap_or("pat"))?.as_str().to_owned()),
            client_id: text(custom, "databricksClientId").or_else(|| config.client_id.clone()),
            oauth_secret_name: text(custom, "databricksOauthSecret")
                .or_else(|| config.oauth_secret_name.clone())
                .or_else(|| Some("databricks-oauth".into())),
            oidc_token_file: checked_token_file(file.as_deref(), config, "template.custom.databricksOidcTokenFile")?,
            oidc_service_account: None,
            oidc_audience: text(custom, "databricksOidcAudience")
                .or_else(|| config.oidc_audience.clone())
                .or_else(|| Some("databricks".into())),
            namespace: Some(namespace.to_owned()),
        })
    }

    /// Who the run's calls act as. A meta is input like any other: the token file it
    /// names must be the agent's own (see [`checked_token_file`]).
    fn credentials(&self, config: &Config) -> Result<Credentials, AgentError> {
        let file = checked_token_file(self.oidc_token_file.as_deref(), config, "resource meta: oidc_token_file")?;
        Ok(Credentials {
            kind: AuthType::parse(self.auth_type.as_deref().unwrap_or("pat"))?,
            client_id: self.client_id.clone(),
            oidc_token_file: file,
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
}

impl DatabricksAgent {
    /// The agent for both of flytekit's task types, `spark` (the `Databricks` config) and
    /// `databricks` (`DatabricksV2`).
    pub fn new(config: Config) -> Result<Self, String> {
        config.validate()?;
        Ok(Self { client: Client::new(&config)?, config })
    }

    /// Only instances on the allowlist get credentials; anything else is refused before a
    /// byte is sent.
    fn check_instance(&self, raw: &str) -> Result<String, AgentError> {
        let instance = normalize(raw);
        let allowed = self.config.trusted_instances();
        if allowed.iter().any(|a| a.eq_ignore_ascii_case(&instance)) {
            return Ok(instance);
        }
        Err(AgentError::permission_denied(format!(
            "Databricks instance '{instance}' is not allowed: this agent sends credentials only to {} \
             (setting databricks.allowed_instances)",
            if allowed.is_empty() { "no instance at all".to_owned() } else { allowed.join(", ") }
        )))
    }

    /// The instance and credentials of a meta, checked before anything is sent: a forged
    /// meta must not redirect credentials, and Databricks' run ids are integers, so
    /// anything else was not written by a Databricks agent.
    fn checked(&self, meta: &DatabricksMeta) -> Result<(String, Credentials), AgentError> {
        let id = &meta.run_id;
        if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AgentError::invalid_argument(
                "resource meta: run_id is not a Databricks run id (an integer); the meta was not written by a \
                 Databricks agent",
            ));
        }
        Ok((self.check_instance(&meta.databricks_instance)?, meta.credentials(&self.config)?))
    }
}

pub(crate) fn normalize(instance: &str) -> String {
    instance.trim().trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/').to_owned()
}

/// Databricks' `state.life_cycle_state`.
#[derive(Debug, PartialEq, Eq, strum::EnumString)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
enum LifeCycle {
    Queued,
    Pending,
    Running,
    Terminating,
    Terminated,
    Skipped,
    InternalError,
    Blocked,
    WaitingForRetry,
    #[strum(default)]
    Unknown(String),
}

/// Databricks' `state.result_state`.
#[derive(Debug, PartialEq, Eq, strum::EnumString)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
enum ResultState {
    Success,
    Failed,
    #[strum(serialize = "TIMEDOUT")]
    TimedOut,
    Canceled,
    SuccessWithFailures,
    UpstreamFailed,
    UpstreamCanceled,
    Excluded,
    Disabled,
    MaximumConcurrentRunsReached,
    #[strum(default)]
    Unknown(String),
}

/// The newer `status.termination_details.type`.
#[derive(Debug, PartialEq, Eq, strum::EnumString)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
enum TerminationType {
    Success,
    InternalError,
    ClientError,
    CloudFailure,
    #[strum(default)]
    Unknown(String),
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

/// What a run from `runs/get` means for the task. Unknown states keep the task running
/// with a message naming them: Databricks adds states, and a task must not fail because
/// the agent is older.
fn resource_for(run: &Json) -> Resource {
    let message = str_at(run, "/state/state_message")
        .filter(|m| !m.is_empty())
        .or_else(|| str_at(run, "/status/termination_details/message"))
        .unwrap_or_default();
    let result = str_at(run, "/state/result_state")
        .map(|text| text.parse().unwrap_or_else(|_| ResultState::Unknown(text.to_owned())));
    // A terminated run's `status` says whose fault it was, which `result_state` does not.
    if let Some(text) = str_at(run, "/status/termination_details/type") {
        let code = str_at(run, "/status/termination_details/code").unwrap_or_default();
        let phase = match (text.parse().unwrap_or_else(|_| TerminationType::Unknown(text.to_owned())), code) {
            (_, "CANCELED" | "USER_CANCELED") => Some(Phase::Aborted),
            // A successful termination type with a failing result (e.g. SUCCESS_WITH_FAILURES)
            // is decided by the result below.
            (TerminationType::Success, _) => {
                matches!(result, Some(ResultState::Success) | None).then_some(Phase::Succeeded)
            }
            (TerminationType::InternalError | TerminationType::CloudFailure, _) => Some(Phase::RetryableFailed),
            (TerminationType::ClientError, c) if CAPACITY_CODES.contains(&c) => Some(Phase::RetryableFailed),
            (TerminationType::ClientError, _) => Some(Phase::Failed),
            (TerminationType::Unknown(_), _) => None,
        };
        if let Some(p) = phase {
            return Resource::new(p).with_message(if message.is_empty() { code } else { message });
        }
    }
    let text = str_at(run, "/state/life_cycle_state").or_else(|| str_at(run, "/status/state")).unwrap_or_default();
    let phase = match text.parse().unwrap_or_else(|_| LifeCycle::Unknown(text.to_owned())) {
        LifeCycle::Queued | LifeCycle::Blocked => Phase::Queued,
        LifeCycle::Pending => Phase::Initializing,
        LifeCycle::Running | LifeCycle::Terminating | LifeCycle::WaitingForRetry => Phase::Running,
        LifeCycle::Skipped => Phase::Failed,
        LifeCycle::InternalError => Phase::RetryableFailed,
        LifeCycle::Terminated => match result {
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
                let why = format!("Databricks reports result state '{r}', which this agent does not know");
                return Resource::running().with_message(why);
            }
            None => return Resource::running().with_message("the run terminated; waiting for its result"),
        },
        LifeCycle::Unknown(s) => {
            let why = format!("Databricks reports life cycle state '{s}', which this agent does not know");
            return Resource::running().with_message(why);
        }
    };
    Resource::new(phase).with_message(message)
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
        vec![TaskCategory::new(SPARK_TASK_TYPE, 0), TaskCategory::new(TASK_TYPE, 0)]
    }

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<DatabricksMeta, AgentError> {
        let custom = task.custom();
        let instance = text(&custom, "databricksInstance").or_else(|| self.config.default_instance.clone());
        let instance = instance.ok_or_else(|| {
            AgentError::invalid_argument(
                "template.custom.databricksInstance: missing; set databricks_instance on the task config or \
                 FLYTE_DATABRICKS_INSTANCE on the agent",
            )
        })?;
        let instance = self.check_instance(&instance)?;
        let namespace = task.metadata.as_ref().map(|m| m.namespace.as_str()).unwrap_or_default();
        let meta = DatabricksMeta::for_task(&custom, &self.config, instance, namespace)?;
        let creds = meta.credentials(&self.config)?;
        let mut spec = job_spec(&task, &custom, self.config.service_credential_provider.as_deref())?;
        // Tokens starting `flyte-` are the agent's (one per task attempt, so a repeated submit
        // returns the same run): a task that chose one could make another task's CreateTask
        // adopt a run it prepared.
        if spec.get("idempotency_token").and_then(Json::as_str).is_some_and(|t| t.starts_with("flyte-")) {
            return Err(AgentError::invalid_argument(
                "template.custom.databricksConf.idempotency_token: tokens starting with 'flyte-' are the agent's own \
                 (one per task attempt); choose another or leave it unset",
            ));
        }
        if let (None, Some(id)) = (spec.get("idempotency_token"), task.attempt_id("databricks")) {
            spec.insert("idempotency_token".into(), json!(format!("flyte-{}", id.simple())));
        }
        let ws = self.client.at(&meta.databricks_instance, &creds);
        let answer = ws.call(ctx, Method::POST, "runs/submit", &[], Some(&Json::Object(spec))).await;
        let run_id = match answer.map_err(Failure::into_error)?.get("run_id") {
            Some(Json::Number(n)) => n.to_string(),
            Some(Json::String(s)) => s.clone(),
            _ => return Err(AgentError::internal("Databricks runs/submit answered without a run_id")),
        };
        Ok(DatabricksMeta { run_id, ..meta })
    }

    async fn get(&self, ctx: &Context, meta: DatabricksMeta) -> Result<Resource, AgentError> {
        let (instance, creds) = self.checked(&meta)?;
        let ws = self.client.at(&instance, &creds);
        let run = match ws.call(ctx, Method::GET, "runs/get", &[("run_id", &meta.run_id)], None).await {
            Ok(run) => run,
            Err(f) => return f.into_poll(SERVICE.name, &format!("run {} on {instance}", meta.run_id)),
        };
        let mut resource = resource_for(&run).with_log_link(console_link(&run, &instance, &meta.run_id));
        // A token stored in a Python agent's meta is this request's value, which the
        // process-wide scrubber does not know: the service's text is scrubbed of it here.
        if let Some(t) = &creds.stored_token {
            resource.message = t.scrub_from(&resource.message);
            resource.log_links.iter_mut().for_each(|l| l.uri = t.scrub_from(&l.uri));
        }
        Ok(resource)
    }

    async fn delete(&self, ctx: &Context, meta: DatabricksMeta) -> Result<(), AgentError> {
        let (instance, creds) = self.checked(&meta)?;
        let body = json!({"run_id": meta.run_id});
        let ws = self.client.at(&instance, &creds);
        ws.call(ctx, Method::POST, "runs/cancel", &[], Some(&body)).await.map(drop).or_else(Failure::into_cancel)
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
            assert_eq!(resource_for(&run(life, result, None)).phase, phase, "{life} {result:?}");
        }
        assert!(resource_for(&run("HIBERNATING", None, None)).message.contains("HIBERNATING"));
        assert_eq!(resource_for(&run("TERMINATED", Some("SUCCESS"), None)).message, "msg");
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
            assert_eq!(
                resource_for(&run("TERMINATED", result, Some((code, ty)))).phase,
                phase,
                "{code} {ty} {result:?}"
            );
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
            assert_eq!(m.credentials(&Config::default()).unwrap().kind, AuthType::Pat);
        }
        let m: DatabricksMeta = serde_json::from_str(v2).unwrap();
        assert_eq!(m.credentials(&Config::default()).unwrap().stored_token.unwrap().expose(), "dapi-secret-1");
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

    /// The meta and the credentials a task's `custom` gives.
    fn for_task(custom: &Json, config: &Config) -> Result<(DatabricksMeta, Credentials), AgentError> {
        let meta = DatabricksMeta::for_task(custom.as_object().unwrap(), config, "i".into(), "ns")?;
        let creds = meta.credentials(config)?;
        Ok((meta, creds))
    }

    #[test]
    fn task_settings_win_over_agent_settings_and_defaults_apply() {
        let config =
            Config { auth_type: Some("oauth_m2m".into()), client_id: Some("agent-client".into()), ..Config::default() };
        let (m, a) = for_task(&json!({}), &config).unwrap();
        assert_eq!((a.kind, a.client_id.as_deref()), (AuthType::OauthM2m, Some("agent-client")));
        assert_eq!(m.oauth_secret_name.as_deref(), Some("databricks-oauth"));
        assert_eq!(m.oidc_audience.as_deref(), Some("databricks"));
        let config = Config { oidc_token_file: Some("/t".into()), ..config };
        let custom = json!({"databricksAuthType": "oidc_federation", "databricksClientId": "task-client", "databricksOidcTokenFile": "/t"});
        let (_, a) = for_task(&custom, &config).unwrap();
        assert_eq!(
            (a.kind, a.client_id.as_deref(), a.token_file().unwrap().as_str()),
            (AuthType::OidcFederation, Some("task-client"), "/t")
        );
        let (_, a) = for_task(&json!({"databricksAuthType": "oidc_federation"}), &config).unwrap();
        assert_eq!(a.token_file().unwrap(), "/t", "the configured file when the task names none");
        // A file the configuration does not name is never read, whatever the task says.
        for path in ["/proc/self/environ", "/etc/shadow", "/t/../etc/shadow", "/no/such/file"] {
            let custom = json!({"databricksAuthType": "oidc_federation", "databricksOidcTokenFile": path});
            for config in [&config, &Config::default()] {
                let err = for_task(&custom, config).unwrap_err();
                assert!(
                    matches!(&err, AgentError::PermissionDenied(m) if m.contains("databricks.oidc_token_file") && !m.contains(path)),
                    "{path}: {err}"
                );
            }
        }
        let bad = json!({"databricksAuthType": "kerberos"});
        assert!(matches!(for_task(&bad, &Config::default()), Err(AgentError::InvalidArgument(_))));
    }
}
