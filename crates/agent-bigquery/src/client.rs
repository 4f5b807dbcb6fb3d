//! BigQuery's JobService (insert, get, cancel) through Google's client. Its errors are
//! adapted to the kit's [`Failure`] by [`SERVICE`], the one declaration of how BigQuery
//! answers; transient ones are retried inside the caller's deadline.

use std::sync::Arc;
use std::time::Duration;

use agent_core::http::{Failure, SdkCalls, Service, limit, retry_after};
use agent_core::prelude::*;
use google_cloud_auth::credentials::Credentials;
use google_cloud_bigquery_v2::client::JobService;
use google_cloud_bigquery_v2::model::Job;
use google_cloud_gax::error::Error as ApiError;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::NeverRetry;

use crate::agent::BigQueryMeta;
use crate::config::Config;
use crate::credentials::{Exchange, PerCall, with_token};

/// How BigQuery answers: Google's error statuses, 404 for a job it does not know.
pub(crate) const SERVICE: Service =
    Service::new("BigQuery", "Check the agent's Google credentials and their BigQuery roles");

/// What to do when Google's client finds no credentials.
const ADC: &str = "Provide Application Default Credentials (workload identity or GOOGLE_APPLICATION_CREDENTIALS), \
                   or set BIGQUERY_EMULATOR_HOST for an emulator";

/// The JobService client, how to retry it, and the exchange of keys requests bring.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    jobs: JobService,
    calls: SdkCalls,
    pub(crate) keys: Arc<Exchange>,
}

impl Client {
    pub(crate) async fn new(config: &Config) -> Result<Self, String> {
        // Google's client builds its own HTTP client and has no way to add CA certificates.
        if config.rest.ca_bundle.is_some() {
            let why = "Google's BigQuery client takes no extra CA certificates: unset it and point SSL_CERT_FILE \
                       at a PEM bundle of your CA plus the system's (it replaces the system's store)";
            return Err(format!("bigquery.ca_bundle: {why}"));
        }
        // Retries happen in `call` below, where the deadline and Retry-After are known.
        let mut builder = JobService::builder().with_retry_policy(NeverRetry);
        // Google's client makes the CLIENT spans (and sends `traceparent`) itself.
        if agent_core::telemetry::exporting() {
            builder = builder.with_tracing();
        }
        let cannot = |e: &dyn std::fmt::Display| format!("bigquery: cannot create the BigQuery client: {e}. {ADC}");
        // The endpoint whose adaptive limit the calls share (`host:port`).
        let mut endpoint = "bigquery.googleapis.com:443".to_owned();
        let own = if let Some(host) = &config.emulator_host {
            endpoint.clone_from(host);
            builder = builder.with_endpoint(format!("http://{host}"));
            google_cloud_auth::credentials::anonymous::Builder::new().build()
        } else {
            if let Some(url) = &config.endpoint {
                if let Ok(u) = reqwest::Url::parse(url) {
                    let host = u.host_str().unwrap_or_default();
                    endpoint = format!("{host}:{}", u.port_or_known_default().unwrap_or(443));
                }
                builder = builder.with_endpoint(url.clone());
            }
            google_cloud_auth::credentials::Builder::default().build().map_err(|e| cannot(&e))?
        };
        // One client for every call: each call's own token, when its request brought a key,
        // replaces the agent's credentials for that call only.
        builder = builder.with_credentials(Credentials::from(PerCall(own)));
        let jobs = builder.build().await.map_err(|e| cannot(&e))?;
        let calls = SdkCalls::new("bigquery", &config.rest, &endpoint);
        Ok(Self { jobs, calls, keys: Arc::new(Exchange::new(config)?) })
    }

    /// Runs call `what` with the shared retry policy, as `token` when the request brought a
    /// key; `attempt` gets the timeout of its try.
    async fn call<T, Fut>(
        &self,
        ctx: &Context,
        token: Option<&Secret>,
        what: &str,
        attempt: impl Fn(Duration) -> Fut,
    ) -> Result<T, Failure>
    where
        Fut: Future<Output = Result<T, ApiError>>,
    {
        self.calls
            .retried(ctx, what, |timeout| {
                // Boxed: Google's request futures are large, and nested in the retry loop
                // they would overflow a thread's stack in debug builds.
                let sent = Box::pin(with_token(token, attempt(timeout)));
                async move { sent.await.map_err(|e| failure(what, &e)) }
            })
            .await
    }

    /// `jobs.insert`; `None` when the job exists already (409), made by an earlier attempt
    /// of the same CreateTask. Safe to retry: the job id is fixed, so a repeat is a 409.
    pub(crate) async fn insert(
        &self,
        ctx: &Context,
        token: Option<&Secret>,
        job: &Job,
        ua: &str,
    ) -> Result<Option<Job>, Failure> {
        let project = job.job_reference.as_ref().map(|r| r.project_id.as_str()).unwrap_or_default();
        let conflict = |e: ApiError| if e.http_status_code() == Some(409) { Ok(None) } else { Err(e) };
        self.call(ctx, token, "job insert", |timeout| {
            let call = self.jobs.insert_job().set_project_id(project).set_job(job.clone()).with_user_agent(ua);
            async move { call.with_attempt_timeout(timeout).send().await.map(Some).or_else(conflict) }
        })
        .await
    }

    /// `jobs.get` of `meta`'s job, for call `what`.
    pub(crate) async fn get(
        &self,
        ctx: &Context,
        token: Option<&Secret>,
        what: &str,
        meta: &BigQueryMeta,
    ) -> Result<Job, Failure> {
        let call = self.jobs.get_job().set_project_id(&meta.project).set_job_id(&meta.job_id);
        let call = call.set_location(meta.location.clone().unwrap_or_default());
        self.call(ctx, token, what, |timeout| call.clone().with_attempt_timeout(timeout).send()).await
    }

    /// `jobs.cancel` of `meta`'s job.
    pub(crate) async fn cancel(
        &self,
        ctx: &Context,
        token: Option<&Secret>,
        meta: &BigQueryMeta,
    ) -> Result<(), Failure> {
        let call = self.jobs.cancel_job().set_project_id(&meta.project).set_job_id(&meta.job_id);
        let call = call.set_location(meta.location.clone().unwrap_or_default());
        self.call(ctx, token, "job cancel", |timeout| call.clone().with_attempt_timeout(timeout).send()).await.map(drop)
    }
}

/// Google's error for call `what` as a [`Failure`]: an HTTP status is classified by
/// [`SERVICE`]; no answer at all (timeouts, broken connections, garbled bodies) is
/// transient; credentials the agent could not get are a precondition the operator fixes.
fn failure(what: &str, e: &ApiError) -> Failure {
    if let Some(code) = e.http_status_code() {
        // What Google answered steers the endpoint's limit (a 429 lowers it).
        limit::observe(code, e.http_headers().unwrap_or(&http::HeaderMap::new()), None);
        let message = e.status().map(|s| s.message.as_str()).filter(|m| !m.is_empty()).unwrap_or("no message");
        let after = e.http_headers().and_then(|h| h.get("retry-after")?.to_str().ok()).and_then(retry_after);
        return SERVICE.status(what, code, message, after);
    }
    if e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() || e.is_deserialization() {
        return SERVICE.unreachable(what, e);
    }
    let message = format!("{} {what} failed: {e}", SERVICE.name);
    Failure::Rejected(if e.is_authentication() {
        AgentError::failed_precondition(format!("{message}. The agent has no usable Google credentials"))
    } else {
        AgentError::internal(message)
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use agent_core::retry::Verdict;
    use google_cloud_gax::error::CredentialsError;
    use google_cloud_gax::error::rpc::Status;
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;

    fn http(code: u16, message: &str, retry_after: Option<&str>) -> ApiError {
        let mut headers = HeaderMap::new();
        if let Some(v) = retry_after {
            headers.insert("retry-after", HeaderValue::from_str(v).unwrap());
        }
        ApiError::service_with_http_metadata(Status::default().set_message(message), Some(code), Some(headers))
    }

    #[test]
    fn retry_after_is_honoured_in_both_forms() {
        let f = failure("job status check", &http(429, "slow down", Some("3")));
        assert_eq!(f.verdict(), Verdict::Retry(Some(Duration::from_secs(3))));
        // Before the kit, an HTTP date was ignored and BigQuery was called again at once.
        let at = SystemTime::now() + Duration::from_secs(30);
        let f = failure("job status check", &http(503, "busy", Some(&httpdate::fmt_http_date(at))));
        let Verdict::Retry(Some(wait)) = f.verdict() else { panic!("{f:?}") };
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
    }

    #[test]
    fn googles_errors_become_failures() {
        let f = failure("job status check", &http(404, "Not found: Job p:US.j", None));
        assert!(
            matches!(&f, Failure::Missing(m) if m == "BigQuery job status check failed: HTTP 404: Not found: Job p:US.j")
        );
        let e = failure("job insert", &http(403, "Access Denied", None)).into_error();
        assert!(matches!(&e, AgentError::PermissionDenied(m) if m.contains("BigQuery roles")), "{e}");
        let e = failure("job insert", &http(400, "", None)).into_error();
        assert!(matches!(&e, AgentError::InvalidArgument(m) if m.ends_with("HTTP 400: no message")), "{e}");
        assert!(failure("job cancel", &ApiError::io("connection reset")).is_transient());
        assert!(failure("job cancel", &ApiError::timeout("attempt timeout")).is_transient());
        let no_credentials = ApiError::authentication(CredentialsError::from_msg(false, "no ADC"));
        let e = failure("job insert", &no_credentials).into_error();
        assert!(matches!(&e, AgentError::FailedPrecondition(m) if m.contains("no usable Google credentials")), "{e}");
    }

    #[tokio::test]
    async fn an_extra_ca_bundle_is_refused_at_start_up() {
        let mut config = Config { emulator_host: Some("127.0.0.1:9".into()), ..Config::default() };
        config.rest.ca_bundle = Some("/etc/ssl/private-ca.pem".into());
        let err = Client::new(&config).await.unwrap_err();
        assert!(err.starts_with("bigquery.ca_bundle: ") && err.contains("SSL_CERT_FILE"), "{err}");
    }
}
