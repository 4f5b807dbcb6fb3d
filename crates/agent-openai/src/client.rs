//! OpenAI through async-openai on the kit's pooled client (its CA bundle, user agent,
//! redirect policy and HTTP/2 apply); the key and organization are set per call, since
//! they come from the (rotatable) secret and the task. async-openai's errors are adapted
//! into the kit's [`Failure`], classified once by [`SERVICE`]. Each attempt the kit
//! retries is one SDK call in a slot of the endpoint's adaptive limit; async-openai's own
//! retry layer is replaced by [`Observed`], which reports every answer (its status,
//! `Retry-After`, `x-ratelimit-remaining-requests`) to that limit, so no 429 is retried
//! out of the limit's sight.

use std::time::Duration;

use agent_core::http::{
    Failure, Lanes, Observed, RestClient, RestSettings, SdkCalls, Service, TrustedHosts, header_value,
};
use agent_core::prelude::*;
use agent_core::telemetry;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;

use crate::config::Config;

/// The secret holding the API key, named as flytekit names it.
pub(crate) const KEY_SECRET: &str = "FLYTE_OPENAI_API_KEY";

/// How OpenAI answers: `{"error": {"message": ...}}`; 404 is an object it does not know.
pub(crate) const SERVICE: Service =
    Service::new("OpenAI", "Check the agent's FLYTE_OPENAI_API_KEY secret and the task's OpenAI organization");

/// Where a template names the organization.
pub(crate) const ORG_FIELD: &str = "template.custom.openai_organization";

/// An OpenAI SDK client for one call.
pub(crate) type Sdk = async_openai::Client<OpenAIConfig>;

/// What the agents share: the pooled HTTP client, where it sends, how calls are retried.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: Lanes,
    api_base: String,
    /// How calls are timed, retried and limited.
    pub(crate) calls: SdkCalls,
}

impl Client {
    /// A client whose attempts take `attempt_timeout` at most, retried for at least as
    /// long when the caller set no deadline.
    pub(crate) fn new(config: &Config, attempt_timeout: Duration) -> Result<Self, String> {
        let retry_budget = config.rest.retry_budget.max(attempt_timeout);
        let rest = RestSettings { attempt_timeout, retry_budget, ..config.rest.clone() };
        // The key goes only to the configured base URL (or OpenAI's own): a plain origin,
        // checked at start-up, and no redirect is ever followed elsewhere.
        let base = config.base_url.as_deref().unwrap_or(async_openai::config::OPENAI_API_BASE);
        let trusted = TrustedHosts::new("openai.base_url").origin(base, "openai.base_url")?;
        let http = RestClient::new(SERVICE, "openai", &rest, trusted)?.lanes().clone();
        let url = reqwest::Url::parse(base).map_err(|e| format!("openai.base_url: {e}"))?;
        let endpoint = format!("{}:{}", url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or(443));
        let calls = SdkCalls::new("openai", &rest, &endpoint);
        Ok(Self { http, api_base: base.trim_end_matches('/').to_owned(), calls })
    }

    /// The SDK for one call: the agent's key, the organization `field` (of the template
    /// or the meta) names. Both become headers, which async-openai panics on when a value
    /// cannot be one: they are checked first, and never echoed (a key, control characters).
    pub(crate) fn sdk(&self, ctx: &Context, org: Option<&str>, field: &str) -> Result<Sdk, AgentError> {
        let org = org.filter(|o| !o.is_empty());
        header_value(field, org.unwrap_or_default())
            .map_err(|e| AgentError::invalid_argument(e + "; OpenAI organization ids look like org-…"))?;
        let key = ctx.secret(KEY_SECRET)?;
        let what = format!("the agent secret {KEY_SECRET} (the OpenAI API key)");
        header_value(&what, key.expose()).map_err(AgentError::failed_precondition)?;
        // The base is always set: async-openai would otherwise read it from the environment.
        let config = OpenAIConfig::new().with_api_key(key.expose()).with_api_base(&self.api_base);
        // No organization: async-openai's `OPENAI_ORG_ID`, as flytekit's client reads it.
        let config = if let Some(o) = org { config.with_org_id(o) } else { config };
        let answers = Observed::new(self.http.clone(), Traced);
        // The SDK's own client only builds requests; `answers` sends them on the attempt's lane.
        Ok(Sdk::build(self.http.get(0).clone(), config).with_http_service(answers))
    }
}

/// async-openai's transport with a CLIENT span for each request, whose trace context goes
/// out with it (`traceparent`); otherwise the SDK's plain send.
#[derive(Debug, Clone)]
pub(crate) struct Traced(reqwest::Client);

impl tower::Service<HttpRequestFactory> for Traced {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move {
            let mut request = request.build().await?;
            let span = telemetry::client_span(request.method().as_str(), request.url());
            telemetry::inject(&span, request.headers_mut());
            let answer = tracing::Instrument::instrument(client.execute(request), span.clone()).await.map_err(|e| {
                telemetry::record_http_failure(&span, telemetry::reqwest_failure(&e));
                OpenAIError::Reqwest(e)
            })?;
            telemetry::record_http_status(&span, answer.status().as_u16());
            Ok(answer)
        })
    }
}

/// What an async-openai error of call `what` means; messages are OpenAI's, never the key.
pub(crate) fn failure(what: &str, e: &OpenAIError) -> Failure {
    match e {
        OpenAIError::ApiError(r) => SERVICE.status(what, r.status_code.as_u16(), &r.api_error.message, None),
        OpenAIError::Reqwest(e) => SERVICE.unreachable(what, format_args!("request failed: {e}")),
        OpenAIError::JSONDeserialize(e, _) => SERVICE.unreachable(what, format_args!("the answer is unreadable: {e}")),
        other => Failure::Rejected(AgentError::invalid_argument(format!("{} {what} failed: {other}", SERVICE.name))),
    }
}
