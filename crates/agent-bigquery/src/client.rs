//! BigQuery's JobService (insert, get, cancel) through Google's client, with transient
//! failures retried inside the caller's deadline.

use std::time::{Duration, Instant};

use agent_core::prelude::*;
use agent_core::retry::{RetryConfig, Verdict, retry};
use google_cloud_bigquery_v2::client::JobService;
use google_cloud_bigquery_v2::model::Job;
use google_cloud_gax::error::Error as ApiError;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::NeverRetry;

use crate::config::Config;

/// The JobService client and how to retry it.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    jobs: JobService,
    pub(crate) retry: RetryConfig,
    attempt_timeout: Duration,
}

impl Client {
    pub(crate) async fn new(config: &Config) -> Result<Self, String> {
        // Retries happen in `retry` below, where the deadline and Retry-After are known.
        let mut builder = JobService::builder().with_retry_policy(NeverRetry);
        if let Some(host) = &config.emulator_host {
            builder = builder
                .with_endpoint(format!("http://{host}"))
                .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
        } else if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let jobs = builder.build().await.map_err(|e| {
            format!(
                "bigquery: cannot create the BigQuery client: {e}. Provide Application Default Credentials \
                 (workload identity or GOOGLE_APPLICATION_CREDENTIALS), or set BIGQUERY_EMULATOR_HOST for an emulator"
            )
        })?;
        let retry = RetryConfig { default_budget: config.retry_budget, ..RetryConfig::default() };
        Ok(Self { jobs, retry, attempt_timeout: config.attempt_timeout })
    }

    /// Runs one JobService call with the shared retry policy; `call` gets the timeout of
    /// its attempt (the attempt limit, or less when the deadline is nearer).
    async fn retried<T, Fut>(&self, deadline: Instant, mut call: impl FnMut(Duration) -> Fut) -> Result<T, ApiError>
    where
        Fut: Future<Output = Result<T, ApiError>>,
    {
        retry(&self.retry, deadline, |left| call(self.attempt_timeout.min(left)), verdict).await
    }

    /// `jobs.insert`. Safe to retry: the job id is fixed, so a repeat is a 409.
    pub(crate) async fn insert(
        &self,
        deadline: Instant,
        project: &str,
        job: Job,
        user_agent: &str,
    ) -> Result<Job, ApiError> {
        self.retried(deadline, |timeout| {
            self.jobs
                .insert_job()
                .set_project_id(project)
                .set_job(job.clone())
                .with_user_agent(user_agent)
                .with_attempt_timeout(timeout)
                .send()
        })
        .await
    }

    /// `jobs.get`.
    pub(crate) async fn get(
        &self,
        deadline: Instant,
        project: &str,
        job_id: &str,
        location: &str,
    ) -> Result<Job, ApiError> {
        self.retried(deadline, |timeout| {
            self.jobs
                .get_job()
                .set_project_id(project)
                .set_job_id(job_id)
                .set_location(location)
                .with_attempt_timeout(timeout)
                .send()
        })
        .await
    }

    /// `jobs.cancel`.
    pub(crate) async fn cancel(
        &self,
        deadline: Instant,
        project: &str,
        job_id: &str,
        location: &str,
    ) -> Result<(), ApiError> {
        self.retried(deadline, |timeout| {
            self.jobs
                .cancel_job()
                .set_project_id(project)
                .set_job_id(job_id)
                .set_location(location)
                .with_attempt_timeout(timeout)
                .send()
        })
        .await
        .map(|_| ())
    }
}

/// Transient: throttling, server errors, timeouts, broken connections, garbled answers.
pub(crate) fn verdict(e: &ApiError) -> Verdict {
    match e.http_status_code() {
        Some(408 | 429 | 500 | 502 | 503 | 504) => Verdict::Retry(retry_after(e)),
        Some(_) => Verdict::Fail,
        None if e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() || e.is_deserialization() => {
            Verdict::Retry(None)
        }
        None => Verdict::Fail,
    }
}

fn retry_after(e: &ApiError) -> Option<Duration> {
    let v = e.http_headers()?.get("retry-after")?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A short description for users: status code and BigQuery's message.
pub(crate) fn describe(e: &ApiError) -> String {
    match (e.http_status_code(), e.status()) {
        (Some(code), Some(s)) if !s.message.is_empty() => format!("HTTP {code}: {}", s.message),
        (Some(code), _) => format!("HTTP {code}"),
        _ => e.to_string(),
    }
}

/// The error for a call that failed for good (after retries, when transient).
pub(crate) fn to_agent_error(e: &ApiError, what: &str) -> AgentError {
    let msg = format!("BigQuery {what} failed: {}", describe(e));
    match e.http_status_code() {
        Some(400) => AgentError::invalid_argument(msg),
        Some(401 | 403) => AgentError::permission_denied(format!(
            "{msg}. Check the agent's Google credentials and their BigQuery roles"
        )),
        Some(404) => AgentError::not_found(msg),
        _ if matches!(verdict(e), Verdict::Retry(_)) => AgentError::unavailable(msg),
        _ if e.is_authentication() => {
            AgentError::failed_precondition(format!("{msg}. The agent has no usable Google credentials"))
        }
        _ => AgentError::internal(msg),
    }
}
