//! The BigQuery agent: `create` inserts a query job, `get` maps its state to a phase,
//! `delete` cancels it.

use agent_core::http::Failure;
use agent_core::literals::Value;
use agent_core::prelude::*;
use google_cloud_bigquery_v2::model::{ErrorProto, Job};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

use crate::client::{Client, SERVICE};
use crate::credentials::KEY;
use crate::params::{Datetimes, check_meta, check_task, query_parameters};

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
    /// lack the key and get the output, as they did there; ours write it only when false.
    #[serde(default = "yes", skip_serializing_if = "bool::clone")]
    pub results: bool,
    /// The user agent the job was created with; flyte-sdk's `BigQueryMetadata` has the key
    /// (Flyte 2 metas only: flytekit's has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

fn yes() -> bool {
    true
}

/// `template.custom`: the keys flytekit's `BigQueryConfig` adds, and BigQuery
/// `JobConfigurationQuery` fields in their REST spelling.
#[derive(Debug, Deserialize)]
struct TaskSettings {
    #[serde(rename = "ProjectID")]
    project: String,
    #[serde(rename = "Location", default)]
    location: Option<String>,
    #[serde(rename = "Domain", default)]
    domain: Option<String>,
    #[serde(flatten)]
    query: Map<String, Json>,
}

/// `JobConfiguration` fields that may appear in `custom` but sit beside `query`.
const JOB_LEVEL_KEYS: &[&str] = &["labels", "jobTimeoutMs"];

/// Error reasons BigQuery documents as transient: retrying the task may succeed.
const TRANSIENT_REASONS: &[&str] =
    &["backendError", "internalError", "jobBackendError", "jobInternalError", "rateLimitExceeded", "tableUnavailable"];

/// Reasons that blame the query or its configuration rather than the platform.
const USER_REASONS: &[&str] =
    &["invalidQuery", "invalid", "notFound", "accessDenied", "duplicate", "resourcesExceeded", "quotaExceeded"];

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

/// The flytekit version that serialized the task.
fn runtime_version(task: &TaskRequest) -> &str {
    task.template.metadata.as_ref().and_then(|m| m.runtime.as_ref()).map_or("", |r| r.version.as_str())
}

/// The job to insert: `custom`'s QueryJobConfig keys, the SQL, and the inputs as
/// parameters. Google's model types check every key.
fn build_job(
    task: &TaskRequest,
    meta: &BigQueryMeta,
    mut query: Map<String, Json>,
    dt: Datetimes,
) -> Result<Job, AgentError> {
    let mut configuration: Map<_, _> =
        JOB_LEVEL_KEYS.iter().filter_map(|k| Some(((*k).to_owned(), query.remove(*k)?))).collect();
    query.insert("query".into(), json!(task.sql_statement()?));
    let params = query_parameters(task, dt)?;
    if !params.is_empty() {
        query.entry("parameterMode").or_insert_with(|| json!("NAMED"));
        query.insert("queryParameters".into(), Json::Array(params));
    }
    // The REST API defaults to legacy SQL; flytekit's Python client defaults to standard SQL.
    query.entry("useLegacySql").or_insert(json!(false));
    configuration.insert("query".into(), Json::Object(query));
    let location = meta.location.as_deref().filter(|l| !l.is_empty());
    let reference = json!({"projectId": meta.project, "jobId": meta.job_id, "location": location});
    serde_json::from_value(json!({"jobReference": reference, "configuration": configuration})).map_err(|e| {
        AgentError::invalid_argument(format!("template.custom: not a valid BigQuery query job configuration: {e}"))
    })
}

fn console_link(meta: &BigQueryMeta, location: &str) -> LogLink {
    let (project, job) = (&meta.project, &meta.job_id);
    let uri =
        format!("https://console.cloud.google.com/bigquery?project={project}&j=bq:{location}:{job}&page=queryresults");
    LogLink::new("BigQuery Console", uri).dashboard()
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

/// BigQuery's job states; `Unknown` keeps one this agent does not know yet (by name), so a
/// task never fails because the agent is older than the API.
#[derive(Debug, PartialEq, Eq, strum::EnumString)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
enum JobState {
    Pending,
    Running,
    Done,
    #[strum(default)]
    Unknown(String),
}

/// The resource for a job BigQuery reported.
fn resource_for(job: &Job, meta: &BigQueryMeta) -> Resource {
    let status = job.status.clone().unwrap_or_default();
    let reported = job.job_reference.as_ref().and_then(|r| r.location.clone()).filter(|l| !l.is_empty());
    let link = console_link(meta, &reported.or_else(|| meta.location.clone()).unwrap_or_default());
    let table = job.configuration.as_ref().and_then(|c| c.query.as_ref()?.destination_table.as_ref());
    let state = status.state.parse().unwrap_or_else(|_| JobState::Unknown(status.state.clone()));
    let resource = match state {
        JobState::Pending => Resource::initializing("PENDING"),
        JobState::Running => Resource::running().with_message("RUNNING"),
        JobState::Done => match (&status.error_result, table.filter(|_| meta.results)) {
            (Some(e), _) => failure(e),
            (None, None) => Resource::succeeded().with_message("DONE"),
            (None, Some(t)) => Resource::succeeded().with_message("DONE").with_output("results", {
                let uri = format!("bq://{}:{}.{}", t.project_id, t.dataset_id, t.table_id);
                Value::StructuredDataset { uri, format: String::new() }
            }),
        },
        JobState::Unknown(state) => Resource::running().with_message(format!(
            "BigQuery reports state '{state}', which this agent does not know; waiting for DONE"
        )),
    };
    resource.with_log_link(link)
}

impl AsyncAgent for BigQueryAgent {
    type Meta = BigQueryMeta;

    const NAME: &str = "Bigquery Connector";
    const TASK_TYPES: &[&str] = &[TASK_TYPE];

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<BigQueryMeta, AgentError> {
        let TaskSettings { project, location, domain, query } = serde_json::from_value(Json::Object(task.custom()))
            .map_err(|e| {
                let hint = "set BigQueryConfig(ProjectID=...) on the task";
                AgentError::invalid_argument(format!("template.custom: {e}; {hint}"))
            })?;
        check_task(&project, location.as_deref(), domain.as_deref(), runtime_version(&task))?;
        // Stable per task attempt, so a repeated CreateTask finds the job it created.
        let job_id = format!("flyte_{}", task.attempt_id_or_random("bigquery").simple());
        // Each generation's connector names itself with the SDK version that serialized the
        // task, `<SDK>/<version> (GPN:Union;<domain>)`, and sends datetimes its own way;
        // flyte-sdk reports the results table whatever the task declares, and keeps the user
        // agent in its meta.
        let (sdk, results, dt) = match ctx.protocol() {
            Protocol::Flyteidl2 => ("Flyte", true, Datetimes::Datetime),
            Protocol::Flyteidl => ("Flytekit", task.declares_output("results"), Datetimes::Timestamp),
        };
        let ua = format!("{sdk}/{} (GPN:Union;{})", runtime_version(&task), domain.unwrap_or_default());
        let user_agent = (ctx.protocol() == Protocol::Flyteidl2).then(|| ua.clone());
        let mut meta = BigQueryMeta { job_id, project, location, results, user_agent };
        let job = build_job(&task, &meta, query, dt)?;
        // A service-account key the request brings (Flyte 2) is the job's identity.
        let token = self.client.keys.token(ctx, task.declares_secret(KEY)).await.map_err(Failure::into_error)?;
        let created = match self.client.insert(ctx, token.as_ref(), &job, &ua).await.map_err(Failure::into_error)? {
            Some(job) => job,
            // Already created by an earlier attempt of this CreateTask: adopt it.
            None => {
                let what = "lookup of the job created by an earlier attempt";
                tracing::info!(message = "Adopting the job an earlier CreateTask created.", job_id = %meta.job_id);
                self.client.get(ctx, token.as_ref(), what, &meta).await.map_err(Failure::into_error)?
            }
        };
        let reported = created.job_reference.and_then(|r| r.location);
        meta.location = meta.location.or(reported).filter(|l| !l.is_empty());
        Ok(meta)
    }

    async fn get(&self, ctx: &Context, meta: BigQueryMeta) -> Result<Resource, AgentError> {
        check_meta(&meta.job_id, &meta.project, meta.location.as_deref())?;
        // Token trouble is a failed status check like any other: passing trouble reports the
        // job still running.
        let checked = match self.client.keys.token(ctx, false).await {
            Ok(token) => self.client.get(ctx, token.as_ref(), "job status check", &meta).await,
            Err(f) => Err(f),
        };
        match checked {
            Ok(job) => Ok(resource_for(&job, &meta)),
            // Still running while BigQuery is unreachable: keep the link to the console.
            Err(f) => f
                .into_poll(SERVICE.name, &format!("job {} in project {}", meta.job_id, meta.project))
                .map(|r| r.with_log_link(console_link(&meta, meta.location.as_deref().unwrap_or_default()))),
        }
    }

    async fn delete(&self, ctx: &Context, meta: BigQueryMeta) -> Result<(), AgentError> {
        check_meta(&meta.job_id, &meta.project, meta.location.as_deref())?;
        // A job BigQuery does not know (never created, or expired) is as cancelled as it gets.
        let token = self.client.keys.token(ctx, false).await.map_err(Failure::into_error)?;
        self.client.cancel(ctx, token.as_ref(), &meta).await.or_else(Failure::into_cancel)
    }
}

#[cfg(test)]
mod tests {
    use agent_core::pb::core::Sql;
    use agent_core::pb::core::task_template::Target;
    use google_cloud_bigquery_v2::model::{JobConfiguration, JobConfigurationQuery, JobStatus, TableReference};

    use super::*;

    fn meta(results: bool) -> BigQueryMeta {
        BigQueryMeta {
            job_id: "j1".into(),
            project: "p".into(),
            location: Some("US".into()),
            results,
            user_agent: None,
        }
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
        let fails = |reason| job("DONE", Some((reason, "why")));
        let cases = [
            (job("PENDING", None), Phase::Initializing),
            (job("RUNNING", None), Phase::Running),
            (job("DONE", None), Phase::Succeeded),
            (fails("invalidQuery"), Phase::Failed),
            (fails("backendError"), Phase::RetryableFailed),
            (fails("rateLimitExceeded"), Phase::RetryableFailed),
            (fails("stopped"), Phase::Aborted),
            (job("SUSPENDED", None), Phase::Running),
            (job("", None), Phase::Running),
        ];
        for (job, phase) in cases {
            let r = resource_for(&job, &meta(true));
            assert_eq!(r.phase, phase, "{:?}", job.status);
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
    fn a_job_names_its_location_only_when_the_task_does() {
        let mut task = TaskRequest::default();
        task.template.target = Some(Target::Sql(Sql { statement: "SELECT 1".into(), dialect: 1 }));
        for (location, want) in [(Some("US"), Some("US")), (Some(""), None), (None, None)] {
            let meta = BigQueryMeta { location: location.map(str::to_owned), ..meta(true) };
            let job = build_job(&task, &meta, Map::new(), Datetimes::Timestamp).unwrap();
            let reference = job.job_reference.unwrap();
            assert_eq!((reference.project_id.as_str(), reference.job_id.as_str()), ("p", "j1"));
            assert_eq!(reference.location.as_deref(), want, "{location:?}");
        }
    }

    #[test]
    fn python_metas_decode_and_ours_keep_the_same_keys() {
        let py: BigQueryMeta =
            serde_json::from_str(r#"{"job_id": "dummy_id", "project": "dummy_project", "location": null}"#).unwrap();
        assert_eq!(
            py,
            BigQueryMeta {
                job_id: "dummy_id".into(),
                project: "dummy_project".into(),
                location: None,
                results: true,
                user_agent: None
            }
        );
        assert_eq!(serde_json::to_string(&meta(true)).unwrap(), r#"{"job_id":"j1","project":"p","location":"US"}"#);
    }
}
