//! The agent: a `webhook` task is one HTTP call, answered within `ExecuteTaskSync`.
//!
//! As flytekit's connector: the template's settings are filled from the inputs, GET sends
//! `data` as query parameters and other methods as a JSON body, only 200 succeeds, and the
//! `info` output holds `status_code`, `response_data` and, when asked, `input_data` and
//! `url` (an untyped dict: msgpack, as flytekit encodes it). Beyond it: a failure that may
//! pass (no connection, a timeout, 429, 5xx) is a retryable failure; the answer read is
//! bounded; and the call only reaches addresses the operator allows (see [`crate::guard`]).

use std::sync::Arc;
use std::time::Duration;

use agent_core::literals::Value;
use agent_core::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value as Json};

use crate::client::{Call, Client, refused_text};
use crate::config::Config;
use crate::template::{Scope, fill, native, py_str};

/// The task type flytekit's `WebhookTask` declares.
pub const TASK_TYPE: &str = "webhook";

/// flytekit's default when the template names no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent.
#[derive(Debug, Clone)]
pub struct WebhookAgent(Arc<Client>);

impl WebhookAgent {
    /// An agent with `config`; fails only on an unusable configuration.
    pub fn new(config: Config) -> Result<Self, String> {
        Ok(Self(Arc::new(Client::new(&config)?)))
    }

    /// The call the task asks for: its settings filled from the inputs (and, in headers,
    /// the connection's secrets), then checked.
    fn call(&self, ctx: &Context, task: &TaskRequest) -> Result<Call, AgentError> {
        let custom = custom(task);
        let inputs: Map<String, Json> = task.input_values()?.iter().map(|(k, v)| (k.clone(), native(v))).collect();
        let secret = |name: &str| -> Result<String, AgentError> {
            match ctx.task_credential(name, false)? {
                Some(s) => Ok(s.expose().to_owned()),
                None => Err(AgentError::failed_precondition(format!(
                    "template.custom.headers: {{secrets.{name}}}: the request's connection carries no secret '{name}' \
                     (Flyte 2 sends the secrets the task declares; the agent's own secrets are never filled in)"
                ))),
            }
        };
        let scope = Scope { inputs: &inputs, secret: &secret };
        let field = |key: &str, secrets: bool| -> Result<(Json, bool), AgentError> {
            match custom.get(key) {
                Some(v) => fill(v, &scope, &format!("template.custom.{key}"), secrets),
                None => Ok((Json::Null, false)),
            }
        };
        let (url, _) = field("url", false)?;
        let url = match url {
            Json::String(u) if !u.is_empty() => u,
            Json::Null => {
                return Err(AgentError::invalid_argument("template.custom.url: missing; WebhookTask needs a url"));
            }
            other => py_str(&other),
        };
        let url = reqwest::Url::parse(&url)
            .map_err(|e| AgentError::invalid_argument(format!("template.custom.url: '{url}' is not a URL: {e}")))?;
        self.0.rules.check_url(&url).map_err(|r| refused(&url, &r))?;
        let (method, _) = field("method", false)?;
        let method = match &method {
            Json::Null => "POST".to_owned(),
            other => py_str(other).to_ascii_uppercase(),
        };
        let method = match method.as_str() {
            "GET" => reqwest::Method::GET,
            "POST" => reqwest::Method::POST,
            "PUT" => reqwest::Method::PUT,
            "PATCH" => reqwest::Method::PATCH,
            "DELETE" => reqwest::Method::DELETE,
            other => {
                return Err(AgentError::invalid_argument(format!(
                    "template.custom.method: '{other}'; a webhook is GET, POST, PUT, PATCH or DELETE"
                )));
            }
        };
        let (headers, carries_secret) = field("headers", true)?;
        let headers = header_map(&headers, carries_secret)?;
        let (data, _) = field("data", false)?;
        let flag = |key: &str| -> Result<bool, AgentError> {
            Ok(match field(key, false)?.0 {
                Json::Null => false,
                Json::Bool(b) => b,
                other => {
                    return Err(AgentError::invalid_argument(format!(
                        "template.custom.{key}: {} is not true or false",
                        py_str(&other)
                    )));
                }
            })
        };
        let (show_data, show_url) = (flag("show_data")?, flag("show_url")?);
        let timeout = match field("timeout_sec", false)?.0 {
            Json::Null => DEFAULT_TIMEOUT,
            Json::Number(n) => match n.as_f64().filter(|s| s.is_finite() && *s > 0.0) {
                Some(s) => Duration::from_secs_f64(s.min(86_400.0)),
                None => {
                    return Err(AgentError::invalid_argument(format!(
                        "template.custom.timeout_sec: {n} is not a positive number of seconds"
                    )));
                }
            },
            other => {
                return Err(AgentError::invalid_argument(format!(
                    "template.custom.timeout_sec: {} is not a number of seconds",
                    py_str(&other)
                )));
            }
        };
        Ok(Call { method, url, headers, data, show_data, show_url, timeout, carries_secret })
    }
}

impl SyncAgent for WebhookAgent {
    const NAME: &str = "Webhook Connector";
    const TASK_TYPES: &[&str] = &[TASK_TYPE];

    fn execute(&self, ctx: &Context, task: TaskRequest) -> impl Future<Output = Result<Resource, AgentError>> + Send {
        // The call is built before the future, which keeps only it, not the task.
        let call = self.call(ctx, &task).map(Box::new);
        async move { Ok(self.0.send(ctx, *call?).await) }
    }
}

/// `template.custom` with numbers as flytekit reads them (a Struct's numbers are doubles,
/// and Python keeps them floats: `1` in a body is sent as `1.0`).
fn custom(task: &TaskRequest) -> Map<String, Json> {
    fn value(v: &prost_types::Value) -> Json {
        use prost_types::value::Kind;
        match &v.kind {
            None | Some(Kind::NullValue(_)) => Json::Null,
            Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number),
            Some(Kind::StringValue(s)) => Json::String(s.clone()),
            Some(Kind::BoolValue(b)) => Json::Bool(*b),
            Some(Kind::StructValue(s)) => Json::Object(s.fields.iter().map(|(k, v)| (k.clone(), value(v))).collect()),
            Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value).collect()),
        }
    }
    task.template
        .custom
        .as_ref()
        .map(|s| s.fields.iter().map(|(k, v)| (k.clone(), value(v))).collect())
        .unwrap_or_default()
}

/// The headers of the filled template: a map of names to values (written as Python's
/// `str()` writes non-strings). A value that cannot be a header is refused without
/// echoing it: it may hold a secret.
fn header_map(headers: &Json, sensitive: bool) -> Result<HeaderMap, AgentError> {
    let mut map = HeaderMap::new();
    let entries = match headers {
        Json::Null => return Ok(map),
        Json::Object(m) => m,
        _ => return Err(AgentError::invalid_argument("template.custom.headers: not a map of header names to values")),
    };
    for (name, value) in entries {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            AgentError::invalid_argument(format!("template.custom.headers: '{name}' is not a header name"))
        })?;
        let mut value = HeaderValue::from_str(&py_str(value)).map_err(|_| {
            AgentError::invalid_argument(format!(
                "template.custom.headers.{name}: the value holds characters a header cannot (line breaks, control \
                 characters)"
            ))
        })?;
        // Headers holding a secret stay out of HTTP/2's header compression tables and
        // out of `Debug` output.
        value.set_sensitive(sensitive);
        map.append(header, value);
    }
    Ok(map)
}

/// The `info` output: flytekit's keys, as an untyped dict (msgpack), in its order.
pub(crate) fn info(status: u16, text: String, data: Option<&Json>, url: Option<&reqwest::Url>) -> Value {
    let mut entries: Vec<(&str, Json)> =
        vec![("status_code", Json::from(status)), ("response_data", Json::String(text))];
    if let Some(d) = data {
        entries.push(("input_data", d.clone()));
    }
    if let Some(u) = url {
        entries.push(("url", Json::String(u.to_string())));
    }
    let ordered = Ordered(entries);
    let value = rmp_serde::to_vec_named(&ordered).unwrap_or_default();
    Value::Binary { value, tag: "msgpack".to_owned() }
}

/// A map serialized in the order given.
struct Ordered<'a>(Vec<(&'a str, Json)>);

impl serde::Serialize for Ordered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn refused(url: &reqwest::Url, r: &crate::guard::Refused) -> AgentError {
    AgentError::invalid_argument(format!("template.custom.url: {}", refused_text(url, r)))
}
