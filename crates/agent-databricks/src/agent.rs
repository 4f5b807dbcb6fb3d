//! The Databricks agent: `create` submits a one-time run, `get` maps its state, `delete`
//! cancels it. Tokens never enter the resource meta and only go to allowed instances.

use agent_core::http::Failure;
use agent_core::prelude::*;
use reqwest::Method;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value as Json, json};

use crate::auth::{AUTH_TYPES, AuthType, checked_token_file};
use crate::client::{Client, SERVICE};
use crate::config::Config;
use crate::spec::{flyte2_job_spec, job_spec};

/// The task type of flytekit's `DatabricksV2` config.
pub const TASK_TYPE: &str = "databricks";
/// The task type of flytekit's older `Databricks` config, served alike.
pub const SPARK_TASK_TYPE: &str = "spark";

/// The connection secret a flyte-sdk task names its token by.
pub(crate) const TOKEN_KEY: &str = "databricks_token";

/// The job handle. Reads every form flytekit's agent wrote (2, 3 or 10 keys); writes the
/// 1.16.31 keys except `auth_token`, which is read (for runs the Python agent started) but
/// never written. A run of a Flyte 2 task writes flyte-sdk's two keys only, since
/// flyte-sdk's `DatabricksJobMetadata` refuses any other.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DatabricksMeta {
    /// Host (and port) of the workspace.
    pub databricks_instance: String,
    /// Run id, a string as flytekit stores it (numbers are accepted).
    #[serde(deserialize_with = "string_or_number")]
    pub run_id: String,
    /// A PAT stored by the Python agent; used for its run only.
    #[serde(skip_serializing)]
    pub auth_token: Option<Secret>,
    /// `pat`, `oauth_m2m` or `oidc_federation`.
    pub auth_type: Option<String>,
    /// OAuth client id.
    pub client_id: Option<String>,
    /// Name of the per-namespace OAuth secret.
    pub oauth_secret_name: Option<String>,
    /// Federation JWT file.
    pub oidc_token_file: Option<String>,
    /// Federated service account (discovered per namespace by the Python agent).
    pub oidc_service_account: Option<String>,
    /// Federation audience.
    pub oidc_audience: Option<String>,
    /// Workflow namespace.
    pub namespace: Option<String>,
    /// Written in flyte-sdk's form: the auth settings are the agent's, not the meta's.
    #[serde(skip)]
    pub flyte2: bool,
}

impl Serialize for DatabricksMeta {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut m = s.serialize_struct("DatabricksMeta", if self.flyte2 { 2 } else { 9 })?;
        m.serialize_field("databricks_instance", &self.databricks_instance)?;
        m.serialize_field("run_id", &self.run_id)?;
        if !self.flyte2 {
            m.serialize_field("auth_type", &self.auth_type)?;
            m.serialize_field("client_id", &self.client_id)?;
            m.serialize_field("oauth_secret_name", &self.oauth_secret_name)?;
            m.serialize_field("oidc_token_file", &self.oidc_token_file)?;
            m.serialize_field("oidc_service_account", &self.oidc_service_account)?;
            m.serialize_field("oidc_audience", &self.oidc_audience)?;
            m.serialize_field("namespace", &self.namespace)?;
        }
        m.end()
    }
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
    fn for_task(custom: &Map<String, Json>, config: &Config, instance: String, ns: &str) -> Result<Self, AgentError> {
        let pick = |key: &str, agent: &Option<String>| text(custom, key).or_else(|| agent.clone());
        let kind = AuthType::parse(pick("databricksAuthType", &config.auth_type).as_deref().unwrap_or("pat").trim())?;
        let file = text(custom, "databricksOidcTokenFile");
        Ok(Self {
            databricks_instance: instance,
            auth_type: Some(kind.to_string()),
            client_id: pick("databricksClientId", &config.client_id),
            oauth_secret_name: pick("databricksOauthSecret", &config.oauth_secret_name)
                .or(Some("databricks-oauth".into())),
            oidc_token_file: checked_token_file(file.as_deref(), config, "template.custom.databricksOidcTokenFile")?,
            oidc_audience: pick("databricksOidcAudience", &config.oidc_audience).or(Some("databricks".into())),
            namespace: Some(ns.to_owned()),
            ..Self::default()
        })
    }

    /// How the run authenticates.
    pub(crate) fn kind(&self) -> Result<AuthType, AgentError> {
        AuthType::parse(self.auth_type.as_deref().unwrap_or("pat"))
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
        // A bad auth type stops the agent at start-up instead of failing every task it is given.
        if let Some(kind) = config.auth_type.as_deref().filter(|k| AuthType::parse(k.trim()).is_err()) {
            return Err(format!(
                "invalid configuration: databricks.auth_type (AGENT_DATABRICKS__AUTH_TYPE, or \
                 FLYTE_DATABRICKS_AUTH_TYPE) is {kind:?}; allowed values: {AUTH_TYPES}"
            ));
        }
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

    /// A meta checked before anything is sent, as it is input like any other: a forged one
    /// must not redirect credentials nor name a file for the agent to read (see
    /// [`checked_token_file`]), and Databricks' run ids are integers, so anything else was
    /// not written by a Databricks agent. flyte-sdk's meta (Flyte 2) names no auth
    /// settings: the agent's own apply.
    fn checked(&self, ctx: &Context, mut meta: DatabricksMeta) -> Result<DatabricksMeta, AgentError> {
        if ctx.protocol() == Protocol::Flyteidl2 && meta.auth_type.is_none() {
            let (instance, run_id) = (std::mem::take(&mut meta.databricks_instance), std::mem::take(&mut meta.run_id));
            meta = DatabricksMeta {
                run_id,
                flyte2: true,
                ..DatabricksMeta::for_task(&Map::new(), &self.config, instance, "")?
            };
        }
        let id = &meta.run_id;
        if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AgentError::invalid_argument(
                "resource meta: run_id is not a Databricks run id (an integer); the meta was not written by a \
                 Databricks agent",
            ));
        }
        meta.databricks_instance = self.check_instance(&meta.databricks_instance)?;
        meta.kind()?;
        let file = checked_token_file(meta.oidc_token_file.as_deref(), &self.config, "resource meta: oidc_token_file");
        meta.oidc_token_file = file?;
        Ok(meta)
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

/// What a run from `runs/get` means for the task. Unknown states keep the task running
/// with a message naming them: Databricks adds states, and a task must not fail because
/// the agent is older.
fn resource_for(run: &Json) -> Resource {
    use {LifeCycle as L, ResultState as R, TerminationType as T};
    let at = |path: &str| run.pointer(path).and_then(Json::as_str);
    let message =
        at("/state/state_message").filter(|m| !m.is_empty()).or_else(|| at("/status/termination_details/message"));
    let message = message.unwrap_or_default();
    let result = at("/state/result_state").map(|text| text.parse().unwrap_or_else(|_| R::Unknown(text.to_owned())));
    let unknown = |what: &str, text: &str| {
        Resource::running().with_message(format!("Databricks reports {what} '{text}', which this agent does not know"))
    };
    // A terminated run's `status` says whose fault it was, which `result_state` does not.
    if let Some(text) = at("/status/termination_details/type") {
        let code = at("/status/termination_details/code").unwrap_or_default();
        let phase = match (text.parse().unwrap_or_else(|_| T::Unknown(text.to_owned())), code) {
            (_, "CANCELED" | "USER_CANCELED") => Some(Phase::Aborted),
            // A successful termination type with a failing result (e.g. SUCCESS_WITH_FAILURES)
            // is decided by the result below.
            (T::Success, _) => matches!(result, Some(R::Success) | None).then_some(Phase::Succeeded),
            (T::InternalError | T::CloudFailure, _) => Some(Phase::RetryableFailed),
            (T::ClientError, c) if CAPACITY_CODES.contains(&c) => Some(Phase::RetryableFailed),
            (T::ClientError, _) => Some(Phase::Failed),
            (T::Unknown(_), _) => None,
        };
        if let Some(p) = phase {
            return Resource::new(p).with_message(if message.is_empty() { code } else { message });
        }
    }
    let text = at("/state/life_cycle_state").or_else(|| at("/status/state")).unwrap_or_default();
    let phase = match text.parse().unwrap_or_else(|_| L::Unknown(text.to_owned())) {
        L::Queued | L::Blocked => Phase::Queued,
        L::Pending => Phase::Initializing,
        L::Running | L::Terminating | L::WaitingForRetry => Phase::Running,
        L::Skipped => Phase::Failed,
        L::InternalError => Phase::RetryableFailed,
        L::Unknown(state) => return unknown("life cycle state", &state),
        L::Terminated => match result {
            Some(R::Success) => Phase::Succeeded,
            Some(R::Failed | R::TimedOut | R::SuccessWithFailures | R::UpstreamFailed | R::Excluded | R::Disabled) => {
                Phase::Failed
            }
            Some(R::Canceled | R::UpstreamCanceled) => Phase::Aborted,
            Some(R::MaximumConcurrentRunsReached) => Phase::RetryableFailed,
            Some(R::Unknown(state)) => return unknown("result state", &state),
            None => return Resource::running().with_message("the run terminated; waiting for its result"),
        },
    };
    Resource::new(phase).with_message(message)
}

/// The run's page: Databricks' `run_page_url`, else (and always for flyte-sdk's tasks, as
/// its connector links them) the job's run page on the instance.
fn console_link(run: &Json, instance: &str, run_id: &str, flyte2: bool) -> LogLink {
    let job = run.get("job_id").map(|j| j.as_str().map_or_else(|| j.to_string(), str::to_owned)).unwrap_or_default();
    let page = run.get("run_page_url").and_then(Json::as_str).filter(|u| !u.is_empty() && !flyte2);
    let uri = page.map_or_else(|| format!("https://{instance}/#job/{job}/run/{run_id}"), str::to_owned);
    LogLink::new("Databricks Console", uri)
}

impl AsyncAgent for DatabricksAgent {
    type Meta = DatabricksMeta;

    const NAME: &str = "Databricks Connector";
    const TASK_TYPES: &[&str] = &[SPARK_TASK_TYPE, TASK_TYPE];

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
        // A flyte-sdk task (Flyte 2) runs flyte-sdk's entrypoint, under the token it brings
        // when it brings one, with the agent's auth settings otherwise.
        let token = ctx.task_credential(TOKEN_KEY, task.declares_secret(TOKEN_KEY))?;
        let (meta, mut spec) = if ctx.protocol() == Protocol::Flyteidl2 {
            let meta = DatabricksMeta::for_task(&Map::new(), &self.config, instance, namespace)?;
            (DatabricksMeta { flyte2: true, ..meta }, flyte2_job_spec(&task, &custom)?)
        } else {
            let meta = DatabricksMeta::for_task(&custom, &self.config, instance, namespace)?;
            (meta, job_spec(&task, &custom, self.config.service_credential_provider.as_deref())?)
        };
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
        // The task is not needed while the service is called: freed now, not when the call ends.
        drop((task, custom));
        let answer =
            self.client.at(&meta, token)?.call(ctx, Method::POST, "runs/submit", &[], Some(&spec.into())).await;
        // `get`, not indexing: an answer that is not an object must not panic.
        let run_id = string_or_number(answer.map_err(Failure::into_error)?.get("run_id").cloned().unwrap_or_default())
            .map_err(|_| AgentError::internal("Databricks runs/submit answered without a run_id"))?;
        Ok(DatabricksMeta { run_id, ..meta })
    }

    async fn get(&self, ctx: &Context, meta: DatabricksMeta) -> Result<Resource, AgentError> {
        let meta = self.checked(ctx, meta)?;
        let (instance, run_id) = (&meta.databricks_instance, &meta.run_id);
        let workspace = self.client.at(&meta, ctx.task_credential(TOKEN_KEY, false)?)?;
        let run = match workspace.call(ctx, Method::GET, "runs/get", &[("run_id", run_id)], None).await {
            Ok(run) => run,
            Err(f) => return f.into_poll(SERVICE.name, &format!("run {run_id} on {instance}")),
        };
        let flyte2 = ctx.protocol() == Protocol::Flyteidl2;
        let mut resource = resource_for(&run).with_log_link(console_link(&run, instance, run_id, flyte2));
        // A token stored in a Python agent's meta is this request's value, which the
        // process-wide scrubber does not know: the service's text is scrubbed of it here.
        if let Some(t) = &meta.auth_token {
            resource.message = t.scrub_from(&resource.message);
            resource.log_links.iter_mut().for_each(|l| l.uri = t.scrub_from(&l.uri));
        }
        Ok(resource)
    }

    async fn delete(&self, ctx: &Context, meta: DatabricksMeta) -> Result<(), AgentError> {
        let meta = self.checked(ctx, meta)?;
        let body = json!({"run_id": meta.run_id});
        let cancel = self
            .client
            .at(&meta, ctx.task_credential(TOKEN_KEY, false)?)?
            .call(ctx, Method::POST, "runs/cancel", &[], Some(&body))
            .await;
        cancel.map(drop).or_else(Failure::into_cancel)
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
            assert_eq!(m.kind().unwrap(), AuthType::Pat);
        }
        let m: DatabricksMeta = serde_json::from_str(v2).unwrap();
        assert_eq!(m.auth_token.unwrap().expose(), "dapi-secret-1");
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

    /// The meta a task's `custom` gives, its auth type and token file.
    fn for_task(custom: &Json, config: &Config) -> Result<(DatabricksMeta, AuthType, String), AgentError> {
        let meta = DatabricksMeta::for_task(custom.as_object().unwrap(), config, "i".into(), "ns")?;
        let kind = meta.kind()?;
        let file = crate::auth::token_file(meta.oidc_token_file.as_deref()).unwrap_or_default();
        Ok((meta, kind, file))
    }

    #[test]
    fn task_settings_win_over_agent_settings_and_defaults_apply() {
        let config =
            Config { auth_type: Some("oauth_m2m".into()), client_id: Some("agent-client".into()), ..Config::default() };
        let (m, kind, _) = for_task(&json!({}), &config).unwrap();
        assert_eq!((kind, m.client_id.as_deref()), (AuthType::OauthM2m, Some("agent-client")));
        assert_eq!(m.oauth_secret_name.as_deref(), Some("databricks-oauth"));
        assert_eq!(m.oidc_audience.as_deref(), Some("databricks"));
        let config = Config { oidc_token_file: Some("/t".into()), ..config };
        let custom = json!({"databricksAuthType": "oidc_federation", "databricksClientId": "task-client", "databricksOidcTokenFile": "/t"});
        let (m, kind, file) = for_task(&custom, &config).unwrap();
        assert_eq!(
            (kind, m.client_id.as_deref(), file.as_str()),
            (AuthType::OidcFederation, Some("task-client"), "/t")
        );
        let (_, _, file) = for_task(&json!({"databricksAuthType": "oidc_federation"}), &config).unwrap();
        assert_eq!(file, "/t", "the configured file when the task names none");
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

    /// An emulated workspace over HTTPS and an agent's settings for it; the CA file lives
    /// in a directory removed when the returned guard drops.
    async fn workspace(name: &str) -> (emulators::databricks::Databricks, emulators::Running, Config, Cleanup) {
        let dir = std::env::temp_dir().join(format!("dbx-unit-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = emulators::tls::TestCa::generate().unwrap();
        std::fs::write(dir.join("ca.pem"), ca.ca_pem()).unwrap();
        let db = emulators::databricks::Databricks::new(emulators::databricks::Settings::default());
        let running = db.start(([127, 0, 0, 1], 0).into(), Some(&ca)).await.unwrap();
        let rest = agent_core::http::RestSettings { ca_bundle: Some(dir.join("ca.pem")), ..Default::default() };
        let config = Config { default_instance: Some(running.host()), rest, ..Config::default() };
        (db, running, config, Cleanup(dir))
    }

    struct Cleanup(std::path::PathBuf);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn ctx() -> Context {
        let secrets = agent_core::testing::secrets(&[("_FSEC_FLYTE_DATABRICKS_ACCESS_TOKEN", "dapi-emulator-token")]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        Context::new(TaskCategory::new(TASK_TYPE, 0), secrets).with_deadline(Some(deadline))
    }

    fn meta(value: Json) -> DatabricksMeta {
        serde_json::from_value(value).unwrap()
    }

    /// The unified policy: a run Databricks no longer knows fails the task naming it, and
    /// cancelling it succeeds.
    #[tokio::test]
    async fn a_gone_run_fails_naming_it_and_cancelling_it_succeeds() {
        let (_db, running, config, _dir) = workspace("gone").await;
        let agent = DatabricksAgent::new(config).unwrap();
        let gone = json!({"databricks_instance": running.host(), "run_id": "424242"});
        let r = agent.get(&ctx(), meta(gone.clone())).await.unwrap();
        assert_eq!(r.phase, Phase::Failed);
        assert!(r.message.contains("run 424242") && r.message.contains("does not exist"), "{}", r.message);
        agent.delete(&ctx(), meta(gone)).await.unwrap();
    }

    /// The token endpoint answering 404 says nothing about the run: a poll reports the
    /// refusal instead of failing the task as if the run were gone.
    #[tokio::test]
    async fn a_token_endpoint_404_is_no_missing_run() {
        let (db, running, config, _dir) = workspace("token404").await;
        let config = Config {
            client_id: Some("emulator-client".into()),
            client_secret: Some(Secret::new("emulator-secret")),
            ..config
        };
        let agent = DatabricksAgent::new(config).unwrap();
        let fault = emulators::FaultAction::Status { code: 404, retry_after_secs: None };
        db.faults().push(emulators::FaultRule::new(fault, 1).path("/oidc/v1/token"));
        let m = meta(
            json!({"databricks_instance": running.host(), "run_id": "1", "auth_type": "oauth_m2m", "client_id": "emulator-client"}),
        );
        let err = agent.get(&ctx(), m).await.unwrap_err();
        assert!(
            matches!(&err, AgentError::PermissionDenied(m) if m.contains("emulator-client") && m.contains("404")),
            "{err:?}"
        );
    }

    /// A client secret read from the settings file is not on the process-wide scrub list
    /// (only the environment's is): the token endpoint's echo of it is scrubbed all the same.
    #[tokio::test]
    async fn a_client_secret_from_the_settings_is_scrubbed_from_the_token_endpoints_echo() {
        let (db, running, config, _dir) = workspace("echo").await;
        let secret: Secret = serde_json::from_str("\"settings-file-secret\"").unwrap();
        let config = Config { client_id: Some("emulator-client".into()), client_secret: Some(secret), ..config };
        let agent = DatabricksAgent::new(config).unwrap();
        db.faults()
            .push(emulators::FaultRule::new(emulators::FaultAction::Echo { code: 400 }, 1).path("/oidc/v1/token"));
        let m = meta(
            json!({"databricks_instance": running.host(), "run_id": "1", "auth_type": "oauth_m2m", "client_id": "emulator-client"}),
        );
        let err = agent.get(&ctx(), m).await.unwrap_err();
        assert!(matches!(&err, AgentError::PermissionDenied(_)), "{err:?}");
        assert!(err.message().contains("[REDACTED]"), "the echo came back: {}", err.message());
        assert!(!err.message().contains("settings-file-secret"), "{}", err.message());
    }
}
