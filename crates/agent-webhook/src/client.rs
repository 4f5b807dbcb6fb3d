//! Where a webhook call goes and how it is made: one HTTP client whose DNS resolution and
//! redirects pass the address rules ([`crate::guard`]), no proxy (a proxy would resolve
//! names out of the rules' sight), answers read up to a bound, and failures sorted into
//! what flytekit reports and what may pass.

use std::sync::Arc;
use std::time::Duration;

use agent_core::prelude::*;
use agent_core::telemetry;
use reqwest::header::HeaderMap;
use serde_json::Value as Json;

use crate::config::Config;
use crate::guard::{Refused, Resolver, Rules, refusal};

/// Time kept back from the caller's deadline to answer.
const ANSWER_MARGIN: Duration = Duration::from_millis(200);

/// One call, as the filled template asks for it.
pub(crate) struct Call {
    pub(crate) method: reqwest::Method,
    pub(crate) url: reqwest::Url,
    pub(crate) headers: HeaderMap,
    pub(crate) data: Json,
    pub(crate) show_data: bool,
    pub(crate) show_url: bool,
    pub(crate) timeout: Duration,
    /// Whether a header holds one of the task's secrets: then no redirect is followed,
    /// since a redirect would carry the header to another host.
    pub(crate) carries_secret: bool,
}

/// The HTTP clients of the agent.
#[derive(Debug)]
pub(crate) struct Client {
    /// The address rules, also checked on each template's URL before the call.
    pub(crate) rules: Arc<Rules>,
    /// Follows up to `max_redirects`, each checked.
    client: reqwest::Client,
    /// Follows none: for requests whose headers carry a secret.
    no_redirects: reqwest::Client,
    max_response_bytes: usize,
    /// `webhook.send_trace_context`.
    send_trace_context: bool,
}

impl Client {
    /// The clients for `config`; fails only on an unusable configuration.
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        let rules = Arc::new(Rules::new(config)?);
        let mut certs = Vec::new();
        if let Some(path) = &config.ca_bundle {
            let pem =
                std::fs::read(path).map_err(|e| format!("webhook.ca_bundle: cannot read {}: {e}", path.display()))?;
            certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("webhook.ca_bundle: {} is not a PEM bundle: {e}", path.display()))?;
        }
        let build = |redirects: usize| {
            let checked = rules.clone();
            let policy = if redirects == 0 {
                reqwest::redirect::Policy::none()
            } else {
                reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() > redirects {
                        let n = attempt.previous().len();
                        return attempt.error(Refused(format!(
                            "more than {redirects} redirects ({n}); webhook.max_redirects allows {redirects}"
                        )));
                    }
                    match checked.check_url(attempt.url()) {
                        Ok(()) => attempt.follow(),
                        Err(r) => {
                            let to = attempt.url().host_str().unwrap_or_default().to_owned();
                            attempt.error(Refused(format!("a redirect to {to}: {r}")))
                        }
                    }
                })
            };
            let mut builder = reqwest::Client::builder()
                .user_agent(concat!("flyte-agent-webhook/", env!("CARGO_PKG_VERSION")))
                .redirect(policy)
                .retry(reqwest::retry::never().max_retries_per_request(0))
                // A proxy would resolve the name itself, out of the address rules' sight.
                .no_proxy()
                .dns_resolver(Arc::new(Resolver(rules.clone())));
            if !certs.is_empty() {
                builder = builder.tls_certs_merge(certs.clone());
            }
            builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))
        };
        Ok(Self {
            client: build(config.max_redirects)?,
            no_redirects: build(0)?,
            rules,
            max_response_bytes: config.max_response_bytes,
            send_trace_context: config.send_trace_context,
        })
    }

    /// Makes the call: its result as flytekit reports it, plus retryable failures for
    /// trouble that may pass.
    pub(crate) async fn send(&self, ctx: &Context, call: Call) -> Resource {
        let timeout = match ctx.time_left() {
            Some(left) => call.timeout.min(left.saturating_sub(ANSWER_MARGIN)),
            None => call.timeout,
        };
        let client = if call.carries_secret { &self.no_redirects } else { &self.client };
        // The path is left out of the span: a webhook URL's path is often its credential.
        let span = telemetry::client_span_to_host(call.method.as_str(), &call.url);
        let mut headers = call.headers;
        if self.send_trace_context {
            telemetry::inject(&span, &mut headers);
        }
        let mut request = client.request(call.method.clone(), call.url.clone()).headers(headers).timeout(timeout);
        // No `data` at all (WebhookTask always writes one; a hand-made template may not):
        // no body, as httpx sends none for `json=None`.
        request = if call.method == reqwest::Method::GET {
            request.query(&query_pairs(&call.data))
        } else if call.data.is_null() {
            request
        } else {
            request.json(&call.data)
        };
        let response = match tracing::Instrument::instrument(request.send(), span.clone()).await {
            Ok(r) => r,
            Err(e) => {
                telemetry::record_http_failure(&span, telemetry::reqwest_failure(&e));
                return failed_call(&call.url, &e, timeout);
            }
        };
        let status = response.status().as_u16();
        telemetry::record_http_status(&span, status);
        let text = match read_bounded(response, self.max_response_bytes).await {
            Ok(text) => text,
            Err(Unread::TooLarge) => {
                return Resource::failed(format!(
                    "the webhook answered {status} with more than {} bytes; the agent reads at most \
                     webhook.max_response_bytes",
                    self.max_response_bytes
                ));
            }
            Err(Unread::Failed(e)) => return failed_call(&call.url, &e, timeout),
        };
        if status != 200 {
            let message = format!("Webhook failed with status code {status}, response: {text}");
            // A refusal for load or a server error may pass; Propeller tries again.
            return if status == 429 || (500..600).contains(&status) {
                Resource::retryable_failure(message)
            } else {
                Resource::failed(message)
            };
        }
        let shown = (call.show_data.then_some(&call.data), call.show_url.then_some(&call.url));
        Resource::succeeded()
            .with_output("info", crate::agent::info(status, text, shown.0, shown.1))
            .with_message("Webhook was successfully invoked!")
    }
}

/// `data` as query parameters, as httpx writes them: lists repeat the key, booleans are
/// `true`/`false`, none is empty, anything else as Python's `str()`.
fn query_pairs(data: &Json) -> Vec<(String, String)> {
    let one = |v: &Json| match v {
        Json::Bool(b) => b.to_string(),
        Json::Null => String::new(),
        other => crate::template::py_str(other),
    };
    match data {
        Json::Object(map) => map
            .iter()
            .flat_map(|(k, v)| match v {
                Json::Array(items) => items.iter().map(|i| (k.clone(), one(i))).collect::<Vec<_>>(),
                other => vec![(k.clone(), one(other))],
            })
            .collect(),
        _ => Vec::new(),
    }
}

enum Unread {
    TooLarge,
    Failed(reqwest::Error),
}

/// The answer's text, at most `limit` bytes (a declared larger length is refused before
/// reading), decoded as UTF-8 with replacement characters for anything else.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<String, Unread> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Unread::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Unread::Failed)? {
        if body.len() + chunk.len() > limit {
            return Err(Unread::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// What a call that got no answer means: refused by the address rules (the task's fault,
/// for good), or trouble that may pass (retryable).
fn failed_call(url: &reqwest::Url, e: &reqwest::Error, timeout: Duration) -> Resource {
    if let Some(r) = refusal(e) {
        return Resource::failed(refused_text(url, r));
    }
    let host = url.host_str().unwrap_or_default();
    if e.is_timeout() {
        return Resource::retryable_failure(format!(
            "the webhook at {host} did not answer within {:.1} s (template.custom.timeout_sec, or the call's deadline)",
            timeout.as_secs_f64()
        ));
    }
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    Resource::retryable_failure(format!("the webhook at {host} could not be reached: {detail}"))
}

pub(crate) fn refused_text(url: &reqwest::Url, r: &Refused) -> String {
    format!("the agent does not call {}: {r}", url.host_str().unwrap_or_default())
}
