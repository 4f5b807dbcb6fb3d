//! The REST agent kit: what every agent's client of its external service shares.
//!
//! - [`RestSettings`]: `attempt_timeout`, `retry_budget`, `ca_bundle`, flattened into
//!   every agent's settings section.
//! - [`RestClient`]: one pooled reqwest client (rustls, the extra CA bundle, the agent's
//!   user agent, no redirects, HTTP/2 where the service offers it) that sends only to
//!   [`TrustedHosts`], with a per-attempt timeout and retries inside the caller's deadline
//!   (`Retry-After` in both forms), each attempt within the endpoint's adaptive
//!   concurrency limit ([`limit`]).
//! - [`SdkCalls`]: the same timing, retries and limit for agents on a vendor SDK, whose
//!   HTTP layer reports answers through [`limit::observe`] ([`Observed`] for a tower one).
//! - [`Service`] and [`Failure`]: one classification of a service's answer, declared once
//!   per agent, with one poll/cancel policy ([`Failure::into_poll`],
//!   [`Failure::into_cancel`]).
//! - [`Auth`] and [`TokenCache`]: where a call's bearer token comes from, refreshed once
//!   on a 401, cached with single-flight refresh.

mod failure;
mod jwt;
pub mod limit;
mod tokens;
mod trust;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::agent::Context;
use crate::error::AgentError;
use crate::retry::{RetryConfig, retry};
use crate::secrets::Secret;

pub use failure::{Failure, Service, retry_after};
pub use jwt::RsaSigner;
pub use limit::Limiter;
pub use tokens::{DEFAULT_CAPACITY, TokenCache};
pub use trust::{LANES, Lanes, STREAMS_PER_LANE, TrustedHosts, client, header_value, path_id};

/// How an agent talks to its service over HTTP; every agent's settings section embeds
/// it with `#[serde(flatten)]`, so the keys sit beside the agent's own
/// (`databricks.attempt_timeout`, `AGENT_DATABRICKS__ATTEMPT_TIMEOUT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestSettings {
    /// Longest single HTTP attempt.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// Time spent retrying when a call carries no deadline.
    #[serde(with = "humantime_serde")]
    pub retry_budget: Duration,
    /// Extra CA certificates (PEM) to trust, e.g. a private CA or a proxy's;
    /// `SSL_CERT_FILE` works too.
    pub ca_bundle: Option<PathBuf>,
    /// Calls in flight to one service endpoint before its answers have said more or fewer
    /// are welcome; the limit then adapts (see [`limit`]).
    pub initial_concurrency: usize,
}

impl Default for RestSettings {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(5),
            retry_budget: Duration::from_secs(8),
            ca_bundle: None,
            initial_concurrency: 256,
        }
    }
}

impl RestSettings {
    /// Its keys, for the [`crate::describe::Description`] of each section it is flattened
    /// into (`.flattened(RestSettings::HELP)`).
    pub const HELP: &'static [crate::describe::Entry] = &[
        ("attempt_timeout", "Longest single HTTP attempt."),
        ("retry_budget", "Time spent retrying when a call carries no deadline."),
        ("ca_bundle", "Extra CA certificates (PEM) to trust, e.g. a private CA or a proxy's; SSL_CERT_FILE works too."),
        (
            "initial_concurrency",
            "Calls in flight to one endpoint until its answers say more or fewer are welcome (the limit then adapts).",
        ),
    ];

    /// The retry policy these settings give.
    pub fn retry(&self) -> RetryConfig {
        RetryConfig { default_budget: self.retry_budget, ..RetryConfig::default() }
    }
}

/// How an agent on a vendor SDK (Google's client, async-openai) calls its service: its
/// [`RestSettings`] and the adaptive limit of the one endpoint the SDK talks to. Each
/// attempt holds a slot of that limit; the SDK's HTTP layer reports the answer with
/// [`limit::observe`] (or, without a report, success counts as answered).
#[derive(Debug, Clone)]
pub struct SdkCalls {
    /// The timing and retry settings.
    pub settings: RestSettings,
    limits: Arc<Limiter>,
    endpoint: String,
}

impl SdkCalls {
    /// Calls of the agent with settings section `section` to `endpoint` (`host:port`).
    pub fn new(section: &str, settings: &RestSettings, endpoint: &str) -> Self {
        let limits = Arc::new(Limiter::new(section, settings.initial_concurrency));
        Self { settings: settings.clone(), limits, endpoint: endpoint.to_owned() }
    }

    /// The endpoint's limit (made on first use, so its metrics register with the
    /// exporter the server installs after the agents are built).
    pub fn endpoint(&self) -> Arc<limit::Endpoint> {
        self.limits.endpoint(&self.endpoint)
    }

    /// Runs `attempt` (given its timeout: `attempt_timeout`, or less when the deadline
    /// is nearer) until it succeeds, fails for good, or the caller's deadline would pass;
    /// each attempt waits for a slot first. The attempt classifies the SDK's errors into a
    /// [`Failure`]; `what` names the call in a [`Failure::Busy`]. A call made inside
    /// another's attempt (a lookup before a create) rides on that attempt's slot: waiting
    /// for a second slot while holding one could starve every holder.
    pub async fn retried<T, Fut>(
        &self,
        ctx: &Context,
        what: &str,
        attempt: impl FnMut(Duration) -> Fut,
    ) -> Result<T, Failure>
    where
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = self.settings.retry();
        let deadline = policy.deadline(ctx);
        let timeout = self.settings.attempt_timeout;
        let nested = limit::in_attempt();
        let attempt = &std::sync::Mutex::new(attempt);
        let one = |_: Duration| async move {
            let next = || {
                let left = deadline.saturating_duration_since(Instant::now());
                let mut attempt = attempt.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                (*attempt)(timeout.min(left))
            };
            if nested {
                return next().await;
            }
            let endpoint = self.endpoint();
            loop {
                let permit = endpoint.acquire(what, Some(deadline)).await?;
                // A refusal for load is sent again when the limit lets it (see `Permit::throttled`).
                match permit.run(next()).await {
                    (Err(_), true) if Instant::now() < deadline => {}
                    (result, _) => return result,
                }
            }
        };
        retry(&policy, deadline, one, Failure::verdict).await
    }

    /// [`Self::retried`] for a vendor SDK's call `what` to `service`: each attempt is `attempt`'s
    /// future for its timeout, cut off at that timeout by [`Service::timed`] and its error
    /// classified by `adapt`. The futures are boxed: SDK futures are large, and nested in
    /// the retry loop they can overflow a thread's stack in debug builds.
    pub async fn retried_sdk<T, E, Fut>(
        &self,
        ctx: &Context,
        service: &Service,
        what: &str,
        mut attempt: impl FnMut(Duration) -> Fut,
        adapt: impl Fn(&str, &E) -> Failure,
    ) -> Result<T, Failure>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        self.retried(ctx, what, |limit| Box::pin(service.timed(what, limit, attempt(limit), &adapt))).await
    }
}

/// An SDK's HTTP layer as a tower service (async-openai's): each request goes out on its
/// attempt's lane of [`Lanes`] ([`limit::lane`]), through the service `make` builds over
/// that lane's client, and its answer is reported to the attempt's limit
/// ([`limit::observe`]) on its way back.
pub struct Observed<S> {
    lanes: Lanes,
    make: fn(reqwest::Client) -> S,
}

impl<S> Observed<S> {
    /// Requests through `make(client)` for the lane's client.
    pub fn new(lanes: Lanes, make: fn(reqwest::Client) -> S) -> Self {
        Self { lanes, make }
    }
}

impl<S> Clone for Observed<S> {
    fn clone(&self) -> Self {
        Self { lanes: self.lanes.clone(), make: self.make }
    }
}

impl<S> std::fmt::Debug for Observed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed").finish_non_exhaustive()
    }
}

impl<S, R> tower::Service<R> for Observed<S>
where
    S: tower::Service<R, Response = reqwest::Response> + Send + 'static,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = reqwest::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<reqwest::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        // Each call gets its own service over its lane, readied in `call`.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        let service = (self.make)(self.lanes.get(limit::lane()).clone());
        Box::pin(async move {
            let response = tower::ServiceExt::oneshot(service, request).await?;
            let http2 = response.version() == reqwest::Version::HTTP_2;
            limit::observe(response.status().as_u16(), response.headers(), Some(http2));
            Ok(response)
        })
    }
}

/// Where a call's bearer token comes from.
pub trait Auth: Sync {
    /// The token for one attempt (`None`: send no `Authorization` header). `refused` is
    /// the token the service just answered 401 to; a source that can fetch a new one
    /// does so (once, see [`TokenCache::get_or_fetch`]).
    fn bearer(
        &self,
        ctx: &Context,
        refused: Option<&Secret>,
    ) -> impl Future<Output = Result<Option<Secret>, Failure>> + Send;

    /// Whether a 401 is worth one more try with a token fetched again.
    fn refreshable(&self) -> bool {
        false
    }
}

/// No credentials.
#[derive(Debug, Clone, Copy)]
pub struct Anonymous;

impl Auth for Anonymous {
    async fn bearer(&self, _: &Context, _: Option<&Secret>) -> Result<Option<Secret>, Failure> {
        Ok(None)
    }
}

/// An API key read from the named secret for each call (so rotations and per-request
/// connection secrets apply).
#[derive(Debug, Clone, Copy)]
pub struct SecretKey(pub &'static str);

impl Auth for SecretKey {
    async fn bearer(&self, ctx: &Context, _: Option<&Secret>) -> Result<Option<Secret>, Failure> {
        Ok(Some(ctx.secret(self.0)?))
    }
}

/// A service's answer that is a result: a 2xx, or a status the [`Service`] declared.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The JSON body; `null` when the body was empty.
    pub body: Json,
}

/// One call, as [`RestClient::call`] sends it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// Names the call in messages, e.g. `"runs/get"`.
    pub what: &'a str,
    /// HTTP method.
    pub method: &'a Method,
    /// Full URL, checked against the trusted hosts before anything else happens.
    pub url: &'a str,
    /// Query parameters.
    pub query: &'a [(&'a str, &'a str)],
    /// JSON body.
    pub body: Option<&'a Json>,
    /// A credential the request carries besides its bearer token (a form's client secret,
    /// a subject token), scrubbed from the service's messages like the token is.
    pub also_secret: Option<&'a Secret>,
}

impl<'a> Call<'a> {
    /// A call without query or body.
    pub fn new(what: &'a str, method: &'a Method, url: &'a str) -> Self {
        Self { what, method, url, query: &[], body: None, also_secret: None }
    }

    /// With query parameters.
    #[must_use]
    pub fn query(mut self, query: &'a [(&'a str, &'a str)]) -> Self {
        self.query = query;
        self
    }

    /// With a JSON body.
    #[must_use]
    pub fn json(mut self, body: &'a Json) -> Self {
        self.body = Some(body);
        self
    }

    /// With a credential in the request besides the bearer token, to scrub from answers.
    #[must_use]
    pub fn scrubbing(mut self, secret: &'a Secret) -> Self {
        self.also_secret = Some(secret);
        self
    }
}

/// The one client agents reach their service with (see the module docs).
#[derive(Debug, Clone)]
pub struct RestClient {
    http: Lanes,
    trusted: TrustedHosts,
    service: Service,
    policy: RetryConfig,
    attempt_timeout: Duration,
    limits: Arc<Limiter>,
}

impl RestClient {
    /// A client for `service` with `settings`, sending only to `trusted` hosts. `section`
    /// is the agent's settings section (`databricks`), named in configuration errors and in
    /// the user agent (`flyte-agent-databricks/0.1.0`: every crate has the workspace's version).
    pub fn new(
        service: Service,
        section: &str,
        settings: &RestSettings,
        trusted: TrustedHosts,
    ) -> Result<Self, String> {
        let user_agent = format!("flyte-agent-{section}/{}", env!("CARGO_PKG_VERSION"));
        let http = Lanes::new(&user_agent, settings.ca_bundle.as_deref(), &format!("{section}.ca_bundle"))?;
        let limits = Arc::new(Limiter::new(section, settings.initial_concurrency));
        let (policy, attempt_timeout) = (settings.retry(), settings.attempt_timeout);
        Ok(Self { http, trusted, service, policy, attempt_timeout, limits })
    }

    /// The service this client classifies answers for.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The pooled reqwest clients, for an SDK that takes one (async-openai): the CA
    /// bundle, user agent and redirect policy then apply to it too.
    pub fn lanes(&self) -> &Lanes {
        &self.http
    }

    /// When retries must stop for this call.
    pub fn deadline(&self, ctx: &Context) -> Instant {
        self.policy.deadline(ctx)
    }

    /// Checks `url` against the trusted hosts: `INVALID_ARGUMENT` when it does not parse
    /// (it was built from a template or meta), `PERMISSION_DENIED` when the host is not
    /// trusted. Callers that derive credentials for a host check it first.
    pub fn check(&self, url: &str) -> Result<reqwest::Url, AgentError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            AgentError::invalid_argument(format!("the task names a host that does not form a URL: {e}"))
        })?;
        self.trusted.check(&parsed)?;
        Ok(parsed)
    }

    /// Sends `call` with the token `auth` gives, retrying transient failures inside the
    /// caller's deadline and fetching the token again once on a 401 when `auth` can.
    /// `shape` adds what is particular to the service to each attempt (headers; the
    /// attempt number, from 1, lets a service mark resubmissions).
    pub async fn call(
        &self,
        ctx: &Context,
        call: Call<'_>,
        auth: &impl Auth,
        shape: impl Fn(RequestBuilder, u32) -> RequestBuilder + Sync,
    ) -> Result<Answer, Failure> {
        // The host is checked before any token is fetched or any byte sent.
        let url = self.check(call.url)?;
        let endpoint = self.limits.for_url(&url);
        let deadline = self.deadline(ctx);
        let attempts = AtomicU32::new(0);
        let (url, shape, attempts, endpoint) = (&url, &shape, &attempts, &endpoint);
        let attempt = |left: Duration| async move {
            let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            let token = auth.bearer(ctx, None).await?;
            let send = |token: Option<Secret>, mut n: u32| async move {
                loop {
                    let mut permit = endpoint.acquire(call.what, Some(deadline)).await?;
                    let left = deadline.saturating_duration_since(Instant::now()).min(left);
                    let sent = self.send(call, url, token.as_ref(), left, &mut permit, |r| shape(r, n)).await;
                    // A refusal for load is sent again when the limit lets it (see `Permit::throttled`),
                    // numbered as an attempt of its own for services that mark resubmissions.
                    if !(sent.is_err() && permit.throttled() && Instant::now() < deadline) {
                        return sent;
                    }
                    n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
                }
            };
            match send(token.clone(), n).await {
                // An OAuth token can be revoked before it expires: fetch a new one, once.
                Err(Failure::Unauthenticated(_)) if auth.refreshable() => {
                    send(auth.bearer(ctx, token.as_ref()).await?, n).await
                }
                other => other,
            }
        };
        retry(&self.policy, deadline, attempt, Failure::verdict).await
    }

    /// One attempt in `permit`'s slot: send, read, classify; the answer's status and
    /// headers go to the endpoint's limit.
    async fn send(
        &self,
        call: Call<'_>,
        url: &reqwest::Url,
        token: Option<&Secret>,
        left: Duration,
        permit: &mut limit::Permit,
        shape: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Answer, Failure> {
        let http = self.http.get(permit.lane());
        let mut req = http.request(call.method.clone(), url.clone()).timeout(self.attempt_timeout.min(left));
        if let Some(t) = token {
            req = req.bearer_auth(t.expose());
        }
        if !call.query.is_empty() {
            req = req.query(call.query);
        }
        if let Some(b) = call.body {
            req = req.json(b);
        }
        let what = call.what;
        let span = crate::telemetry::client_span(call.method.as_str(), url);
        let mut traced = http::HeaderMap::new();
        crate::telemetry::inject(&span, &mut traced);
        let sending = tracing::Instrument::instrument(shape(req).headers(traced).send(), span.clone());
        let resp = sending.await.map_err(|e| {
            crate::telemetry::record_http_failure(&span, crate::telemetry::reqwest_failure(&e));
            // A request that cannot even be built (a header value with a line break, say)
            // came from a bad value, not from a service in trouble: retrying cannot help.
            if e.is_builder() {
                return Failure::Rejected(AgentError::invalid_argument(format!(
                    "{} {what}: the request could not be built: a value from the task or its resource meta is not \
                     valid in an HTTP request (e.g. a control character in a header value)",
                    self.service.name
                )));
            }
            // reqwest errors lose their URL, which can carry query parameters.
            self.service.unreachable(what, format_args!("request failed: {}", e.without_url()))
        })?;
        let status = resp.status().as_u16();
        crate::telemetry::record_http_status(&span, status);
        permit.answered(limit::Signal::of(status, resp.headers()));
        permit.over_http2(resp.version() == reqwest::Version::HTTP_2);
        let wait = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(retry_after);
        let bytes = resp.bytes().await.map_err(|e| {
            crate::telemetry::record_http_failure(&span, "body");
            self.service.unreachable(what, format_args!("reading the answer failed: {}", e.without_url()))
        })?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Some(Json::Null)
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        if (200..300).contains(&status) || self.service.answers.contains(&status) {
            return body.map(|body| Answer { status, body }).ok_or_else(|| {
                self.service.unreachable(what, format_args!("HTTP {status} with a body that is not JSON"))
            });
        }
        // A service may echo what it was sent; a credential the process-wide scrubber does
        // not know (a token stored in a meta, a subject token read for this call) is
        // scrubbed here.
        let mut message = self.service.message_in(body.as_ref());
        for secret in token.into_iter().chain(call.also_secret) {
            message = secret.scrub_from(&message);
        }
        let transient = status == 429 || status >= 500;
        Err(self.service.status(what, status, &message, wait.filter(|_| transient)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::agent::TaskCategory;

    /// A loopback server answering each request with the next scripted response (status,
    /// extra headers, body) and recording the requests it got.
    async fn scripted(script: Vec<(u16, &'static str, String)>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for (status, headers, body) in script {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0; 64 * 1024];
                let n = sock.read(&mut buf).await.unwrap();
                log.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                    body.len()
                );
                sock.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        (format!("http://{addr}"), seen)
    }

    const SVC: Service = Service::new("Svc", "check the key").with_answers(&[422]);

    fn client(base: &str) -> RestClient {
        let trusted = TrustedHosts::new("svc.base_url").origin(base, "svc.base_url").unwrap();
        RestClient::new(SVC, "svc", &RestSettings::default(), trusted).unwrap()
    }

    fn ctx() -> Context {
        let env = crate::secrets::EnvSource::Map(Arc::new(
            [("FLYTE_SECRETS_DEFAULT_DIR".to_owned(), "/nonexistent-secrets-dir".to_owned())].into(),
        ));
        Context::new(TaskCategory::new("t", 0), crate::secrets::SecretStore::new(env))
            .with_deadline(Some(Instant::now() + Duration::from_secs(5)))
    }

    /// A token source that hands out a new token each time it is asked after a refusal.
    struct Rotating(AtomicU32);

    impl Auth for Rotating {
        async fn bearer(&self, _: &Context, refused: Option<&Secret>) -> Result<Option<Secret>, Failure> {
            let n = if refused.is_some() {
                self.0.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                self.0.load(Ordering::SeqCst)
            };
            Ok(Some(Secret::new(format!("rotating-token-{n}"))))
        }
        fn refreshable(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn transient_answers_are_retried_honouring_retry_after_in_both_forms() {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let (base, seen) = scripted(vec![
            (503, "retry-after: 0\r\n", "{\"message\":\"busy\"}".into()),
            (429, Box::leak(format!("retry-after: {date}\r\n").into_boxed_str()), String::new()),
            (200, "", "{\"ok\":1}".into()),
        ])
        .await;
        let c = client(&base);
        let url = format!("{base}/v1/jobs");
        let answer = c
            .call(&ctx(), Call::new("submit", &Method::POST, &url), &Anonymous, |r, n| {
                r.header("x-attempt", n.to_string())
            })
            .await;
        assert_eq!(answer.unwrap(), Answer { status: 200, body: json!({"ok": 1}) });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(
            seen[2].contains("x-attempt: 3")
                && seen[0].contains(&format!("user-agent: flyte-agent-svc/{}", env!("CARGO_PKG_VERSION"))),
            "{}",
            seen[2]
        );
    }

    #[tokio::test]
    async fn a_refused_token_is_fetched_again_once_and_echoes_are_scrubbed() {
        let (base, seen) = scripted(vec![
            (401, "", "{\"message\":\"token rotating-token-0 expired\"}".into()),
            (200, "", "{}".into()),
        ])
        .await;
        let url = format!("{base}/x");
        let auth = Rotating(AtomicU32::new(0));
        client(&base).call(&ctx(), Call::new("get", &Method::GET, &url), &auth, |r, _| r).await.unwrap();
        assert!(seen.lock().unwrap()[1].contains("Bearer rotating-token-1"));

        let (base, _) =
            scripted(vec![(401, "", "{\"message\":\"bad token rotating-token-0\"}".into()), (401, "", "{}".into())])
                .await;
        let url = format!("{base}/x");
        let e = client(&base).call(&ctx(), Call::new("get", &Method::GET, &url), &SecretStatic, |r, _| r).await;
        let e = e.unwrap_err();
        assert!(matches!(e, Failure::Unauthenticated(_)), "{e:?}");
        assert!(!e.message().contains("rotating-token-0") && e.message().contains("check the key"), "{}", e.message());

        // Credentials in the body (a form's client secret) are scrubbed the same way.
        let (base, _) = scripted(vec![(400, "", "{\"message\":\"bad secret form-secret-123\"}".into())]).await;
        let url = format!("{base}/token");
        let secret = Secret::new("form-secret-123");
        let call = Call::new("token", &Method::POST, &url).scrubbing(&secret);
        let e = client(&base).call(&ctx(), call, &Anonymous, |r, _| r).await.unwrap_err();
        assert!(!e.message().contains("form-secret-123") && e.message().contains("bad secret"), "{}", e.message());
    }

    /// A fixed token that cannot be refreshed.
    struct SecretStatic;

    impl Auth for SecretStatic {
        async fn bearer(&self, _: &Context, _: Option<&Secret>) -> Result<Option<Secret>, Failure> {
            Ok(Some(Secret::new("rotating-token-0")))
        }
    }

    #[tokio::test]
    async fn declared_statuses_are_answers_and_the_rest_is_classified_once() {
        let (base, _) = scripted(vec![
            (422, "", "{\"code\":\"002003\"}".into()),
            (404, "", "{\"error\":{\"message\":\"no such job\"}}".into()),
            (200, "", "not json".into()),
        ])
        .await;
        let c = client(&base);
        let url = format!("{base}/s");
        let call = Call::new("status", &Method::GET, &url);
        assert_eq!(c.call(&ctx(), call, &Anonymous, |r, _| r).await.unwrap().status, 422);
        let missing = c.call(&ctx(), call, &Anonymous, |r, _| r).await.unwrap_err();
        assert_eq!(missing, Failure::Missing("Svc status failed: HTTP 404: no such job".into()));
        // A 2xx that is not JSON is transient; the deadline ends the retries.
        let short = ctx().with_deadline(Some(Instant::now() + Duration::from_millis(800)));
        assert!(c.call(&short, call, &Anonymous, |r, _| r).await.unwrap_err().is_transient());
    }

    #[tokio::test]
    async fn untrusted_hosts_get_nothing_not_even_a_token_fetch() {
        struct Panics;
        impl Auth for Panics {
            async fn bearer(&self, _: &Context, _: Option<&Secret>) -> Result<Option<Secret>, Failure> {
                panic!("no token may be fetched for an untrusted host")
            }
        }
        let c = client("http://127.0.0.1:9");
        for (url, code) in [("https://evil.test/x", "PermissionDenied"), ("http://a b/", "InvalidArgument")] {
            let e = c.call(&ctx(), Call::new("get", &Method::GET, url), &Panics, |r, _| r).await.unwrap_err();
            assert!(format!("{e:?}").contains(code), "{url}: {e:?}");
        }
    }

    #[test]
    fn a_url_that_does_not_parse_is_the_tasks_fault_and_nothing_is_sent() {
        let trusted = TrustedHosts::new("x.allowed").domain("example.com");
        let c = RestClient::new(SVC, "x", &RestSettings::default(), trusted).unwrap();
        assert!(matches!(c.check("https://a b.example.com/"), Err(AgentError::InvalidArgument(_))));
        assert!(matches!(c.check("https://a:99999.example.com/"), Err(AgentError::InvalidArgument(_))));
        assert!(matches!(c.check("https://evil.test/x"), Err(AgentError::PermissionDenied(_))));
        assert!(c.check("https://a.example.com/x").is_ok());
    }

    /// An SDK error: a status, or none (the SDK never got an answer).
    #[derive(Debug)]
    struct SdkError(Option<u16>);

    fn adapt(what: &str, e: &SdkError) -> Failure {
        e.0.map_or_else(|| SVC.unreachable(what, "connection reset"), |s| SVC.status(what, s, "sdk says no", None))
    }

    #[tokio::test]
    async fn sdk_attempts_are_cut_off_at_their_timeout_retried_and_their_errors_adapted() {
        let rest = RestSettings { attempt_timeout: Duration::from_millis(50), ..RestSettings::default() };
        let rest = SdkCalls::new("svc", &rest, "svc.example.com:443");
        let (tries, limits) = (AtomicU32::new(0), Mutex::new(Vec::new()));
        // A hanging attempt, then a lost connection, then an answer.
        let answer = rest
            .retried_sdk(
                &ctx(),
                &SVC,
                "jobs.get",
                |limit| {
                    limits.lock().unwrap().push(limit);
                    let n = tries.fetch_add(1, Ordering::SeqCst);
                    async move {
                        match n {
                            0 => std::future::pending().await,
                            1 => Err(SdkError(None)),
                            _ => Ok(n),
                        }
                    }
                },
                adapt,
            )
            .await;
        assert_eq!(answer, Ok(2));
        assert!(limits.lock().unwrap().iter().all(|l| *l <= Duration::from_millis(50)));
        // A timeout alone is transient, named after the service and the call.
        let hung = SVC.timed("jobs.get", Duration::from_millis(10), std::future::pending::<Result<(), _>>(), adapt);
        let hung = hung.await.unwrap_err();
        assert!(hung.is_transient() && hung.message() == "Svc jobs.get failed: no answer within 10 ms", "{hung:?}");
        // An error for good is adapted once and not retried.
        tries.store(0, Ordering::SeqCst);
        let refused = rest
            .retried_sdk(
                &ctx(),
                &SVC,
                "jobs.get",
                |_| {
                    tries.fetch_add(1, Ordering::SeqCst);
                    async { Err::<(), _>(SdkError(Some(403))) }
                },
                adapt,
            )
            .await;
        assert!(matches!(refused, Err(Failure::Rejected(AgentError::PermissionDenied(_)))), "{refused:?}");
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn settings_flatten_into_an_agent_section_and_refuse_unknown_keys() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Section {
            base_url: String,
            #[serde(flatten)]
            rest: RestSettings,
        }
        let s: Section = serde_json::from_value(json!({"base_url": "u", "attempt_timeout": "2s"})).unwrap();
        assert_eq!(
            (s.base_url.as_str(), s.rest.attempt_timeout, s.rest.retry_budget),
            ("u", Duration::from_secs(2), Duration::from_secs(8))
        );
        let e = serde_json::from_value::<Section>(json!({"base_url": "u", "atempt_timeout": "2s"})).unwrap_err();
        assert!(e.to_string().contains("atempt_timeout"), "{e}");
    }
}
