//! The BigQuery agent: `create` inserts a query job, `get` maps its state to a phase,
//! `delete` cancels it.

use google_cloud_bigquery_v2::model::{ErrorProto, Job};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

use agent_core::literals::Value;
use agent_core::prelude::*;
use agent_core::retry::Verdict;

use crate::client::{Client, describe, to_agent_error, verdict};
use crate::ids::{check_meta, check_task};
use crate::params::query_parameters;

/// The task type flytekit's `BigQueryTask` declares.
pub const TASK_TYPE: &str = "bigquery_query_job_task";

/// The job handle. Same keys as flytekit's `BigQueryMetadata`, so metas the Python agent
/// wrote are accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BigQueryMeta {
    /// BigQuery job id.
    pub job_id: String,
    /// Project the job runs in.
    pub project: String,
    /// Location (region) of the job, if the task named one.
    #[serde(default)]
    pub location: Option<String>,
    /// Whether the task declares the `results` output. Metas written by the Python agent
    /// lack the key and get the output, as they did there.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub results: bool,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference.
fn is_true(b: &bool) -> bool {
    *b
}

/// Keys flytekit's `BigQueryConfig` adds to `template.custom`; the rest are BigQuery
/// `JobConfigurationQuery` fields in their REST spelling.
#[derive(Debug, Deserialize)]
struct TaskSettings {
    #[serde(rename = "ProjectID")]
    project: String,
    #[serde(rename = "Location", default)]
    location: Option<String>,
    #[serde(rename = "Domain", default)]
    domain: Option<String>,
}

/// `JobConfiguration` fields that may appear in `custom` but sit beside `query`.
const JOB_LEVEL_KEYS: &[&str] = &["labels", "jobTimeoutMs"];

/// Error reasons BigQuery documents as transient: retrying the task may succeed.
const TRANSIENT_REASONS: &[&str] =
    &["backendError", "internalError", "jobBackendError", "jobInternalError", "rateLimitExceeded", "tableUnavailable"];

/// Reasons that blame the query or its configuration rather than the platform.
const USER_REASONS: &[&str] =
    &["invalidQuery", "invalid", "notFound", "accessDenied", "duplicate", "resourcesExceeded", "quotaExceeded"];

/// BigQuery's job states. Anything else is kept and waited on, never an error: BigQuery
/// may add states, and a task must not fail because the agent is older than the API.
#[derive(Debug, PartialEq, Eq)]
enum JobState<'a> {
    Pending,
    Running,
    Done,
    Unknown(&'a str),
}

impl<'a> JobState<'a> {
    fn parse(s: &'a str) -> Self {
        match s {
            "PENDING" => Self::Pending,
            "RUNNING" => Self::Running,
            "DONE" => Self::Done,
            other => Self::Unknown(other),
        }
    }
}

/// The agent.
#[derive(Debug, Clone)]
pub struct BigQueryAgent {
    client: Client,
}

impl BigQueryAgent {
    /// An agent with a client built from `config`.
    pub async fn new(config: &crate::Config) -> Result<Self, String> {
        Ok(Self { client: Client::new(config).await? })
    }
}

/// A stable job id per task attempt, so a repeated CreateTask finds the job it created.
fn job_id(task: &TaskRequest) -> String {
    format!("flyte_{}", task.attempt_id_or_random("bigquery").simple())
}

/// The flytekit version that serialized the task.
fn runtime_version(task: &TaskRequest) -> &str {
    task.template.metadata.as_ref().and_then(|m| m.runtime.as_ref()).map_or("", |r| r.version.as_str())
}

/// The user agent flytekit sends: `Flytekit/<sdk version> (GPN:Union;<domain>)`.
fn user_agent(task: &TaskRequest, domain: Option<&str>) -> String {
    format!("Flytekit/{} (GPN:Union;{})", runtime_version(task), domain.unwrap_or_default())
}

/// The job to insert: `custom`'s QueryJobConfig keys, the SQL, and the inputs as
/// parameters. Google's model types check every key.
fn build_job(
    task: &TaskRequest,
    job_id: &str,
    settings: &TaskSettings,
    mut custom: Map<String, Json>,
) -> Result<Job, AgentError> {
    for k in ["ProjectID", "Location", "Domain"] {
        custom.remove(k);
    }
    let mut configuration = Map::new();
    for k in JOB_LEVEL_KEYS {
        if let Some(v) = custom.remove(*k) {
            configuration.insert((*k).to_owned(), v);
        }
    }
    let mut query = custom;
    query.insert("query".into(), json!(task.sql_statement()?));
    let params = query_parameters(task)?;
    if !params.is_empty() {
        query.entry("parameterMode").or_insert_with(|| json!("NAMED"));
        query.insert("queryParameters".into(), Json::Array(params));
    }
    // The REST API defaults to legacy SQL; flytekit's Python client defaults to standard SQL.
    query.entry("useLegacySql").or_insert(json!(false));
    configuration.insert("query".into(), Json::Object(query));
    let mut reference = json!({"projectId": settings.project, "jobId": job_id});
    if let Some(l) = settings.location.as_deref().filter(|l| !l.is_empty()) {
        reference["location"] = json!(l);
    }
    serde_json::from_value(json!({"jobReference": reference, "configuration": configuration})).map_err(|e| {
        AgentError::invalid_argument(format!("template.custom: not a valid BigQuery query job configuration: {e}"))
    })
}

fn console_link(project: &str, location: &str, job_id: &str) -> LogLink {
    LogLink::new(
        "BigQuery Console",
        format!(
            "https://console.cloud.google.com/bigquery?project={project}&j=bq:{location}:{job_id}&page=queryresults"
        ),
    )
}

fn failure(e: &ErrorProto) -> Resource {
    let message = format!("BigQuery job failed: {}: {}", e.reason, e.message);
    if e.reason == "stopped" {
        return Resource::aborted(message);
    }
    let transient = TRANSIENT_REASONS.contains(&e.reason.as_str());
    let origin = if USER_REASONS.contains(&e.reason.as_str()) { FailureOrigin::User } else { FailureOrigin::System };
    let resource = if transient { Resource::retryable_failure(message) } else { Resource::failed(message) };
    resource.with_failure(FailureDetail { code: e.reason.clone(), recoverable: transient, origin })
}

/// The resource for a job BigQuery reported.
fn resource_for(job: &Job, meta: &BigQueryMeta) -> Resource {
    let status = job.status.as_ref();
    let location = job
        .job_reference
        .as_ref()
        .and_then(|r| r.location.as_ref())
        .cloned()
        .filter(|l| !l.is_empty())
        .or_else(|| meta.location.clone())
        .unwrap_or_default();
    let link = console_link(&meta.project, &location, &meta.job_id);
    let resource = match JobState::parse(status.map_or("", |s| s.state.as_str())) {
        JobState::Pending => Resource::initializing("PENDING"),
        JobState::Running => Resource::running().with_message("RUNNING"),
        JobState::Done => match status.and_then(|s| s.error_result.as_ref()) {
            Some(e) => failure(e),
            None => {
                let mut r = Resource::succeeded().with_message("DONE");
                let table = job
                    .configuration
                    .as_ref()
                    .and_then(|c| c.query.as_ref())
                    .and_then(|q| q.destination_table.as_ref());
                if let (true, Some(t)) = (meta.results, table) {
                    let uri = format!("bq://{}:{}.{}", t.project_id, t.dataset_id, t.table_id);
                    r = r.with_output("results", Value::StructuredDataset { uri, format: String::new() });
                }
                r
            }
        },
        JobState::Unknown(state) => Resource::running().with_message(format!(
            "BigQuery reports state '{state}', which this agent does not know; waiting for DONE"
        )),
    };
    resource.with_log_link(link)
}

impl AsyncAgent for BigQueryAgent {
    type Meta = BigQueryMeta;

    fn name(&self) -> &str {
        "Bigquery Connector"
    }

    fn task_categories(&self) -> Vec<TaskCategory> {
        vec![TaskCategory::new(TASK_TYPE, 0)]
    }

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<BigQueryMeta, AgentError> {
        let custom = task.custom();
        let settings: TaskSettings = serde_json::from_value(Json::Object(custom.clone())).map_err(|e| {
            AgentError::invalid_argument(format!("template.custom: {e}; set BigQueryConfig(ProjectID=...) on the task"))
        })?;
        check_task(
            &settings.project,
            settings.location.as_deref(),
            settings.domain.as_deref(),
            runtime_version(&task),
        )?;
        let job_id = job_id(&task);
        let job = build_job(&task, &job_id, &settings, custom)?;
        let deadline = self.client.retry.deadline(ctx);
        let ua = user_agent(&task, settings.domain.as_deref());
        let location = match self.client.insert(deadline, &settings.project, job, &ua).await {
            Ok(job) => job.job_reference.and_then(|r| r.location),
            // Already created by an earlier attempt of this CreateTask: adopt it.
            Err(e) if e.http_status_code() == Some(409) => {
                let loc = settings.location.clone().unwrap_or_default();
                let existing = self
                    .client
                    .get(deadline, &settings.project, &job_id, &loc)
                    .await
                    .map_err(|e| to_agent_error(&e, "lookup of the job created by an earlier attempt"))?;
                tracing::info!(message = "Adopted the job an earlier CreateTask created.", job_id = %job_id);
                existing.job_reference.and_then(|r| r.location)
            }
            Err(e) => return Err(to_agent_error(&e, "job insert")),
        };
        Ok(BigQueryMeta {
            job_id,
            project: settings.project,
            location: settings.location.or(location).filter(|l| !l.is_empty()),
            results: task.declares_output("results"),
        })
    }

    async fn get(&self, ctx: &Context, meta: BigQueryMeta) -> Result<Resource, AgentError> {
        check_meta(&meta.job_id, &meta.project, meta.location.as_deref())?;
        let deadline = self.client.retry.deadline(ctx);
        let location = meta.location.clone().unwrap_or_default();
        match self.client.get(deadline, &meta.project, &meta.job_id, &location).await {
            Ok(job) => Ok(resource_for(&job, &meta)),
            Err(e) if e.http_status_code() == Some(404) => Ok(Resource::failed(format!(
                "BigQuery has no job {} in project {} (location '{location}'): {}",
                meta.job_id,
                meta.project,
                describe(&e)
            ))),
            Err(e) if matches!(verdict(&e), Verdict::Retry(_)) => Ok(Resource::unreachable(
                "BigQuery",
                "job",
                &describe(&e),
            )
            .with_log_link(console_link(&meta.project, &location, &meta.job_id))),
            Err(e) => Err(to_agent_error(&e, "job status check")),
        }
    }

    async fn delete(&self, ctx: &Context, meta: BigQueryMeta) -> Result<(), AgentError> {
        check_meta(&meta.job_id, &meta.project, meta.location.as_deref())?;
        let deadline = self.client.retry.deadline(ctx);
        let location = meta.location.clone().unwrap_or_default();
        match self.client.cancel(deadline, &meta.project, &meta.job_id, &location).await {
            // Unknown (never created, or expired) is as cancelled as it gets.
            Err(e) if e.http_status_code() == Some(404) => Ok(()),
            Err(e) => Err(to_agent_error(&e, "job cancel")),
            Ok(()) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use google_cloud_bigquery_v2::model::{JobConfiguration, JobConfigurationQuery, JobStatus, TableReference};

    use super::*;

    fn meta(results: bool) -> BigQueryMeta {
        BigQueryMeta { job_id: "j1".into(), project: "p".into(), location: Some("US".into()), results }
    }

    fn job(state: &str, error: Option<(&str, &str)>) -> Job {
        let mut status = JobStatus::new().set_state(state);
        if let Some((reason, message)) = error {
            status = status.set_error_result(ErrorProto::new().set_reason(reason).set_message(message));
        }
        let table = TableReference::new().set_project_id("p").set_dataset_id("d").set_table_id("t");
        Job::new().set_status(status).set_configuration(
            JobConfiguration::new().set_query(JobConfigurationQuery::new().set_destination_table(table)),
        )
    }

    #[test]
    fn states_map_to_phases_and_unknown_states_wait() {
        let cases = [
            ("PENDING", None, Phase::Initializing),
            ("RUNNING", None, Phase::Running),
            ("DONE", None, Phase::Succeeded),
            ("DONE", Some(("invalidQuery", "Syntax error")), Phase::Failed),
            ("DONE", Some(("backendError", "try again")), Phase::RetryableFailed),
            ("DONE", Some(("rateLimitExceeded", "slow down")), Phase::RetryableFailed),
            ("DONE", Some(("stopped", "cancelled")), Phase::Aborted),
            ("SUSPENDED", None, Phase::Running),
            ("", None, Phase::Running),
        ];
        for (state, err, phase) in cases {
            let r = resource_for(&job(state, err), &meta(true));
            assert_eq!(r.phase, phase, "{state} {err:?}");
            assert_eq!(
                r.log_links[0].uri,
                "https://console.cloud.google.com/bigquery?project=p&j=bq:US:j1&page=queryresults"
            );
        }
        let failed = resource_for(&job("DONE", Some(("invalidQuery", "Syntax error at [1:1]"))), &meta(true));
        assert_eq!(failed.message, "BigQuery job failed: invalidQuery: Syntax error at [1:1]");
        assert_eq!(failed.failure.unwrap().origin, FailureOrigin::User);
    }

    #[test]
    fn results_output_only_when_declared() {
        let ok = resource_for(&job("DONE", None), &meta(true));
        assert_eq!(
            ok.output_values().unwrap()["results"],
            Value::StructuredDataset { uri: "bq://p:d.t".into(), format: String::new() }
        );
        assert!(resource_for(&job("DONE", None), &meta(false)).outputs.is_none());
    }

    #[test]
    fn python_metas_decode_and_ours_keep_the_same_keys() {
        let py: BigQueryMeta =
            serde_json::from_str(r#"{"job_id": "dummy_id", "project": "dummy_project", "location": null}"#).unwrap();
        assert_eq!(
            py,
            BigQueryMeta { job_id: "dummy_id".into(), project: "dummy_project".into(), location: None, results: true }
        );
        assert_eq!(serde_json::to_string(&meta(true)).unwrap(), r#"{"job_id":"j1","project":"p","location":"US"}"#);
    }
}
