//! The Snowflake agent: `create` submits the statement asynchronously, `get` reads its
//! status, `delete` cancels it.

use agent_core::http::{Answer, Call, Failure, path_id};
use agent_core::prelude::*;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::account::{AccountId, Allowed, check_name};
use crate::{bindings::translate, client::Client, client::SERVICE, config::Config};

/// The task type flytekit's `SnowflakeTask` declares.
pub const TASK_TYPE: &str = "snowflake";
/// The connection secrets a flyte-sdk task names its private key and passphrase by.
const KEY: &str = "snowflake_private_key";
const PASSPHRASE: &str = "snowflake_private_key_passphrase";
/// flyte-sdk's `connection_kwargs` the SQL API honours (`role`, `session_parameters`), and
/// the Python driver's own timeouts, which mean nothing without its login.
const CONNECTION_KWARGS: &[&str] = &["role", "session_parameters", "login_timeout", "network_timeout"];

/// A flyte-sdk task's settings (Flyte 2): all in `template.custom`.
#[derive(Debug, Deserialize)]
struct Flyte2Settings {
    account: Option<String>,
    user: Option<String>,
    database: Option<String>,
    schema: Option<String>,
    warehouse: Option<String>,
    #[serde(default)]
    connection_kwargs: serde_json::Map<String, Json>,
    #[serde(default)]
    batch: bool,
}

/// The job handle, with the Python agent's keys (`query_id` is the statement handle).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnowflakeMeta {
    /// User the statement runs as.
    pub user: String,
    /// Account identifier.
    pub account: String,
    /// Database.
    #[serde(default)]
    pub database: String,
    /// Schema.
    #[serde(default)]
    pub schema: String,
    /// Warehouse.
    #[serde(default)]
    pub warehouse: String,
    /// Statement handle (Snowflake's query id).
    pub query_id: String,
    /// Whether the task declares the `results` output.
    #[serde(default)]
    pub has_output: bool,
    /// flyte-sdk's connection settings (Flyte 2 only; flytekit's meta has no such key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_kwargs: Option<serde_json::Map<String, Json>>,
}

impl SnowflakeMeta {
    /// The account, parsed and allowed, after checking the names a forged template or meta
    /// could abuse; `origin` (`template.config.`, `resource meta `) names them in errors.
    fn account(&self, allowed: &Allowed, origin: &str) -> Result<AccountId, AgentError> {
        let account = allowed.check(&self.account, &format!("{origin}account"))?;
        for (key, value) in [("user", &self.user), ("warehouse", &self.warehouse), ("database", &self.database)] {
            check_name(value, &format!("{origin}{key}"))?;
        }
        check_name(&self.schema, &format!("{origin}schema")).map(|_| account)
    }

    /// The query's page. flytekit's: account `xy12345-us-east-1` → region `us-east-1`,
    /// account `xy12345`; flyte-sdk's (Flyte 2): `myorg-myaccount` → organization `myorg`,
    /// account `myaccount`, and an account without `-` as it is.
    fn link(&self, flyte2: bool) -> LogLink {
        let id = &self.query_id;
        let (name, page) = if flyte2 {
            let page = match self.account.split_once('-') {
                Some((org, account)) => format!("{org}/{account}"),
                None => self.account.clone(),
            };
            ("Snowflake Dashboard", page)
        } else {
            let (account, region) = self.account.split_once('-').unwrap_or((&self.account, ""));
            ("Snowflake Query Details", format!("{region}/{account}"))
        };
        LogLink::new(name, format!("https://app.snowflake.com/{page}/#/compute/history/queries/{id}/detail"))
            .dashboard()
    }

    /// The `results` dataset's URI, as each generation's connector writes it.
    fn results_uri(&self, flyte2: bool) -> String {
        let SnowflakeMeta { user, account, warehouse, database, schema, query_id, .. } = self;
        let sep = if flyte2 { '/' } else { ':' };
        format!("snowflake://{user}{sep}{account}/{warehouse}/{database}/{schema}/{query_id}")
    }
}

/// What a status answer means for the task: the SQL API tells a statement's state by the
/// HTTP status (202 accepted or running, 200 succeeded, 422 failed or, with code 000604,
/// cancelled).
fn resource_for(a: &Answer, meta: &SnowflakeMeta, flyte2: bool) -> Resource {
    let field = |k: &str| a.body[k].as_str().unwrap_or_default();
    match (a.status, field("code")) {
        (202, _) => Resource::running().with_message(a.body["message"].as_str().unwrap_or("running")),
        (200, _) => {
            let r = Resource::succeeded().with_message("Statement executed successfully.");
            let results = Value::StructuredDataset { uri: meta.results_uri(flyte2), format: String::new() };
            if meta.has_output { r.with_output("results", results) } else { r }
        }
        (422, "000604") => Resource::aborted("the statement was cancelled"),
        (422, code) => {
            let (message, sql_state) = (field("message"), field("sqlState"));
            Resource::failed(format!("Snowflake statement failed: {message} (code {code}, SQL state {sql_state})"))
                .with_failure(FailureDetail { code: code.to_owned(), recoverable: false, origin: FailureOrigin::User })
        }
        (status, _) => Resource::running()
            .with_message(format!("Snowflake answered HTTP {status}, which this agent does not know; waiting")),
    }
}

/// What a status check means for the task; every resource links to the query's page, also
/// one saying Snowflake could not be reached.
fn polled(outcome: Result<Answer, Failure>, meta: &SnowflakeMeta, flyte2: bool) -> Result<Resource, AgentError> {
    let r = match outcome {
        Ok(answer) => resource_for(&answer, meta, flyte2),
        Err(f) => f.into_poll(SERVICE.name, &format!("statement {}", meta.query_id))?,
    };
    Ok(r.with_log_link(meta.link(flyte2)))
}

/// A session parameter's value: text, a number or a boolean.
fn scalar(v: &Json) -> bool {
    v.is_string() || v.is_number() || v.is_boolean()
}

/// The agent.
#[derive(Debug)]
pub struct SnowflakeAgent {
    client: Client,
    allowed: Allowed,
    config: Config,
}

impl SnowflakeAgent {
    /// An agent with the given settings.
    pub fn new(config: Config) -> Result<Self, String> {
        Ok(Self { client: Client::new(&config)?, allowed: Allowed::new(&config.allowed_accounts)?, config })
    }

    /// The meta of a flyte-sdk task (Flyte 2), its connection settings checked, and whether
    /// it is a batch task.
    fn flyte2_meta(task: &TaskRequest) -> Result<(SnowflakeMeta, bool), AgentError> {
        let s: Flyte2Settings = task.custom_as()?;
        let text = |v: Option<String>| v.map(|v| v.trim().to_owned()).unwrap_or_default();
        let [account, user, database, warehouse] = [s.account, s.user, s.database, s.warehouse].map(text);
        if let Some(key) = [("account", &account), ("user", &user), ("database", &database), ("warehouse", &warehouse)]
            .into_iter()
            .find_map(|(k, v)| v.is_empty().then_some(k))
        {
            let e = format!("template.custom.{key}: missing; set it in the task's SnowflakeConfig");
            return Err(AgentError::invalid_argument(e));
        }
        let schema = Some(text(s.schema)).filter(|s| !s.is_empty()).unwrap_or_else(|| "PUBLIC".into());
        if let Some(key) = s.connection_kwargs.keys().find(|k| !CONNECTION_KWARGS.contains(&k.as_str())) {
            return Err(AgentError::invalid_argument(format!(
                "template.custom.connection_kwargs.{key}: the agent runs statements through Snowflake's SQL API, \
                 which has no such setting; it honours {}",
                CONNECTION_KWARGS.join(", ")
            )));
        }
        let kwargs = &s.connection_kwargs;
        if let Some(role) = kwargs.get("role") {
            check_name(role.as_str().unwrap_or("\u{0}"), "template.custom.connection_kwargs.role")?;
        }
        if kwargs.get("session_parameters").is_some_and(|p| !p.as_object().is_some_and(|m| m.values().all(scalar))) {
            let e = "template.custom.connection_kwargs.session_parameters: must map parameter names to values";
            return Err(AgentError::invalid_argument(e));
        }
        let has_output =
            task.template.interface.as_ref().and_then(|i| i.outputs.as_ref()).is_some_and(|o| !o.variables.is_empty());
        let connection_kwargs = Some(s.connection_kwargs);
        let query_id = String::new();
        Ok((
            SnowflakeMeta { user, account, database, schema, warehouse, query_id, has_output, connection_kwargs },
            s.batch,
        ))
    }

    /// The URL of a meta's statement (with `suffix`) and its account, checked.
    fn statement(&self, meta: &SnowflakeMeta, suffix: &str) -> Result<(String, AccountId), AgentError> {
        let account = meta.account(&self.allowed, "resource meta ")?;
        let path = format!("/api/v2/statements/{}{suffix}", path_id("query_id", &meta.query_id)?);
        Ok((self.client.url(&account, &path), account))
    }
}

impl AsyncAgent for SnowflakeAgent {
    type Meta = SnowflakeMeta;

    const NAME: &str = "Snowflake Connector";
    const TASK_TYPES: &[&str] = &[TASK_TYPE];

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<SnowflakeMeta, AgentError> {
        // flytekit puts the connection in `template.config`; flyte-sdk (Flyte 2) in `custom`,
        // with its own defaults, batch rows and the private key the task brings.
        let flyte2 = ctx.protocol() == Protocol::Flyteidl2;
        let own_key = ctx.task_credential(KEY, task.declares_secret(KEY))?.is_some();
        ctx.task_credential(PASSPHRASE, task.declares_secret(PASSPHRASE))?;
        let (meta, batch, origin) = if flyte2 {
            let (meta, batch) = Self::flyte2_meta(&task)?;
            (meta, batch, "template.custom.")
        } else {
            let get = |k: &str| task.template.config.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
            if let Some(key) = ["account", "user"].into_iter().find(|k| get(k).is_empty()) {
                let e = format!("template.config.{key}: missing; set SnowflakeConfig({key}=...) on the task");
                return Err(AgentError::invalid_argument(e));
            }
            let [user, account, database, schema, warehouse] =
                ["user", "account", "database", "schema", "warehouse"].map(get);
            let (query_id, has_output) = (String::new(), task.declares_output("results"));
            let connection_kwargs = None;
            (
                SnowflakeMeta { user, account, database, schema, warehouse, query_id, has_output, connection_kwargs },
                false,
                "template.config.",
            )
        };
        // A role or session settings of the task's choosing apply to its own identity only: a
        // statement signed with the agent's key runs with the agent's settings.
        let chosen = meta
            .connection_kwargs
            .iter()
            .flat_map(|k| k.keys())
            .find(|k| ["role", "session_parameters"].contains(&k.as_str()));
        if let (Some(key), false) = (chosen, own_key) {
            return Err(AgentError::permission_denied(format!(
                "template.custom.connection_kwargs.{key}: only a task that brings its own key ({KEY} in the request) \
                 may choose it; with the agent's key, statements run with the agent's settings (snowflake.role)"
            )));
        }
        let account = meta.account(&self.allowed, origin)?;
        let (statement, bindings) = translate(task.sql_statement()?, &task, batch)?;
        let (database, schema, warehouse) = (&meta.database, &meta.schema, &meta.warehouse);
        let mut body = json!({"statement": statement, "database": database, "schema": schema, "warehouse": warehouse});
        if !bindings.is_empty() {
            body["bindings"] = Json::Object(bindings);
        }
        if self.config.statement_timeout_secs > 0 {
            body["timeout"] = json!(self.config.statement_timeout_secs);
        }
        let kwargs = meta.connection_kwargs.as_ref();
        // The task's role (flyte-sdk's connection_kwargs) wins over the agent's default.
        if let Some(role) = kwargs.and_then(|k| k.get("role")).and_then(Json::as_str).or(self.config.role.as_deref()) {
            body["role"] = json!(role);
        }
        if let Some(parameters) = kwargs.and_then(|k| k.get("session_parameters")) {
            body["parameters"] = parameters.clone();
        }
        // One request id per task attempt: a repeated CreateTask finds its statement.
        let id = task.attempt_id_or_random(TASK_TYPE).to_string();
        let query = [("async", "true"), ("requestId", id.as_str())];
        let url = self.client.url(&account, "/api/v2/statements");
        let call = Call::new("statement submission", &Method::POST, &url).query(&query).json(&body);
        let answer = self.client.call(ctx, (&account, &meta.user), call).await.map_err(Failure::into_error)?;
        // A statement that fails at once (e.g. bad SQL) still has a handle; get reports it.
        let Some(handle) = answer.body["statementHandle"].as_str().filter(|h| !h.is_empty()) else {
            let (status, message) = (answer.status, SERVICE.message_in(Some(&answer.body)));
            let e = format!("Snowflake accepted the statement without a handle (HTTP {status}): {message}");
            return Err(AgentError::internal(e));
        };
        Ok(SnowflakeMeta { query_id: handle.to_owned(), ..meta })
    }

    async fn get(&self, ctx: &Context, meta: SnowflakeMeta) -> Result<Resource, AgentError> {
        let (url, account) = self.statement(&meta, "")?;
        let call = Call::new("statement status check", &Method::GET, &url);
        let flyte2 = ctx.protocol() == Protocol::Flyteidl2;
        polled(self.client.call(ctx, (&account, &meta.user), call).await, &meta, flyte2)
    }

    async fn delete(&self, ctx: &Context, meta: SnowflakeMeta) -> Result<(), AgentError> {
        let (url, account) = self.statement(&meta, "/cancel")?;
        let call = Call::new("statement cancel", &Method::POST, &url);
        // A finished statement (a 422 answer) and an unknown one need no cancelling.
        self.client.call(ctx, (&account, &meta.user), call).await.map(drop).or_else(Failure::into_cancel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(has_output: bool) -> SnowflakeMeta {
        SnowflakeMeta {
            user: "u".into(),
            account: "xy12345-us-east-1".into(),
            database: "db".into(),
            schema: "s".into(),
            warehouse: "wh".into(),
            query_id: "01b2".into(),
            has_output,
            connection_kwargs: None,
        }
    }

    fn answer(status: u16, body: Json) -> Answer {
        Answer { status, body }
    }

    #[test]
    fn answers_map_to_phases_and_unknown_codes_wait() {
        // 404 is no answer but a statement Snowflake does not know; a failed check reports
        // the statement still running. Both keep the query's link.
        let missing = SERVICE.status("statement status check", 404, "Statement not found", None);
        let unreachable = SERVICE.unreachable("statement status check", "connection refused");
        let cases = [
            (Ok(answer(202, json!({"code": "333334"}))), Phase::Running),
            (Ok(answer(200, json!({"code": "090001"}))), Phase::Succeeded),
            (Ok(answer(422, json!({"code": "000604", "message": "SQL execution canceled"}))), Phase::Aborted),
            (
                Ok(answer(422, json!({"code": "002003", "sqlState": "02000", "message": "Object 'T' does not exist"}))),
                Phase::Failed,
            ),
            (Err(missing), Phase::Failed),
            (Err(unreachable), Phase::Running),
            (Ok(answer(201, json!({}))), Phase::Running),
        ];
        for (a, phase) in cases {
            let r = polled(a.clone(), &meta(false), false).unwrap();
            assert_eq!(r.phase, phase, "{a:?}");
            assert_eq!(
                r.log_links[0].uri,
                "https://app.snowflake.com/us-east-1/xy12345/#/compute/history/queries/01b2/detail"
            );
        }
        let failed = resource_for(
            &answer(422, json!({"code": "002003", "sqlState": "02000", "message": "Object 'T' does not exist"})),
            &meta(false),
            false,
        );
        assert_eq!(
            failed.message,
            "Snowflake statement failed: Object 'T' does not exist (code 002003, SQL state 02000)"
        );
        let gone =
            polled(Err(SERVICE.status("statement status check", 404, "gone", None)), &meta(false), false).unwrap();
        assert!(gone.message.contains("statement 01b2"), "{}", gone.message);
    }

    #[test]
    fn results_are_a_real_structured_dataset() {
        let r = resource_for(&answer(200, json!({})), &meta(true), false);
        assert_eq!(
            r.output_values().unwrap()["results"],
            Value::StructuredDataset {
                uri: "snowflake://u:xy12345-us-east-1/wh/db/s/01b2".into(),
                format: String::new()
            }
        );
        assert!(resource_for(&answer(200, json!({})), &meta(false), false).outputs.is_none());
    }

    /// flyte-sdk's link (organization first, named "Snowflake Dashboard") and results URI.
    #[test]
    fn flyte2_links_and_results_are_flyte_sdks() {
        let m = SnowflakeMeta { account: "myorg-myaccount".into(), ..meta(true) };
        let r = polled(Ok(answer(200, json!({}))), &m, true).unwrap();
        assert_eq!(
            (r.log_links[0].name.as_str(), r.log_links[0].uri.as_str()),
            ("Snowflake Dashboard", "https://app.snowflake.com/myorg/myaccount/#/compute/history/queries/01b2/detail")
        );
        assert!(r.log_links[0].dashboard);
        let plain = SnowflakeMeta { account: "xy12345".into(), ..meta(true) };
        assert_eq!(plain.link(true).uri, "https://app.snowflake.com/xy12345/#/compute/history/queries/01b2/detail");
        assert_eq!(
            r.output_values().unwrap()["results"],
            Value::StructuredDataset {
                uri: "snowflake://u/myorg-myaccount/wh/db/s/01b2".into(),
                format: String::new()
            }
        );
        // flyte-sdk's meta: its keys, connection_kwargs included; flytekit's has none.
        let v2 = SnowflakeMeta { connection_kwargs: Some(serde_json::Map::new()), ..meta(false) };
        let keys: Vec<String> = serde_json::to_value(&v2).unwrap().as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 8);
        assert!(serde_json::to_value(meta(false)).unwrap().get("connection_kwargs").is_none());
    }

    #[test]
    fn python_metas_decode() {
        let py = r#"{"user": "dummy_user", "account": "dummy_account", "database": "dummy_database", "schema": "dummy_schema", "warehouse": "dummy_warehouse", "query_id": "dummy_id", "has_output": false}"#;
        let m: SnowflakeMeta = serde_json::from_str(py).unwrap();
        assert_eq!((m.query_id.as_str(), m.has_output), ("dummy_id", false));
    }
}
