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

    /// flytekit's link: account `xy12345-us-east-1` → region `us-east-1`, account `xy12345`.
    fn link(&self) -> LogLink {
        let (account, region) = self.account.split_once('-').unwrap_or((&self.account, ""));
        let id = &self.query_id;
        let uri = format!("https://app.snowflake.com/{region}/{account}/#/compute/history/queries/{id}/detail");
        LogLink::new("Snowflake Query Details", uri).dashboard()
    }
}

/// What a status answer means for the task: the SQL API tells a statement's state by the
/// HTTP status (202 accepted or running, 200 succeeded, 422 failed or, with code 000604,
/// cancelled).
fn resource_for(a: &Answer, meta: &SnowflakeMeta) -> Resource {
    let field = |k: &str| a.body[k].as_str().unwrap_or_default();
    match (a.status, field("code")) {
        (202, _) => Resource::running().with_message(a.body["message"].as_str().unwrap_or("running")),
        (200, _) => {
            let r = Resource::succeeded().with_message("Statement executed successfully.");
            let SnowflakeMeta { user, account, warehouse, database, schema, query_id, .. } = meta;
            let uri = format!("snowflake://{user}:{account}/{warehouse}/{database}/{schema}/{query_id}");
            let results = Value::StructuredDataset { uri, format: String::new() };
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
fn polled(outcome: Result<Answer, Failure>, meta: &SnowflakeMeta) -> Result<Resource, AgentError> {
    let r = match outcome {
        Ok(answer) => resource_for(&answer, meta),
        Err(f) => f.into_poll(SERVICE.name, &format!("statement {}", meta.query_id))?,
    };
    Ok(r.with_log_link(meta.link()))
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
        let get = |k: &str| task.template.config.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        if let Some(key) = ["account", "user"].into_iter().find(|k| get(k).is_empty()) {
            let e = format!("template.config.{key}: missing; set SnowflakeConfig({key}=...) on the task");
            return Err(AgentError::invalid_argument(e));
        }
        let [user, account, database, schema, warehouse] =
            ["user", "account", "database", "schema", "warehouse"].map(get);
        let (query_id, has_output) = (String::new(), task.declares_output("results"));
        let meta = SnowflakeMeta { user, account, database, schema, warehouse, query_id, has_output };
        let account = meta.account(&self.allowed, "template.config.")?;
        let (statement, bindings) = translate(task.sql_statement()?, &task)?;
        let (database, schema, warehouse) = (&meta.database, &meta.schema, &meta.warehouse);
        let mut body = json!({"statement": statement, "database": database, "schema": schema, "warehouse": warehouse});
        if !bindings.is_empty() {
            body["bindings"] = Json::Object(bindings);
        }
        if self.config.statement_timeout_secs > 0 {
            body["timeout"] = json!(self.config.statement_timeout_secs);
        }
        if let Some(role) = &self.config.role {
            body["role"] = json!(role);
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
        polled(self.client.call(ctx, (&account, &meta.user), call).await, &meta)
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
            let r = polled(a.clone(), &meta(false)).unwrap();
            assert_eq!(r.phase, phase, "{a:?}");
            assert_eq!(
                r.log_links[0].uri,
                "https://app.snowflake.com/us-east-1/xy12345/#/compute/history/queries/01b2/detail"
            );
        }
        let failed = resource_for(
            &answer(422, json!({"code": "002003", "sqlState": "02000", "message": "Object 'T' does not exist"})),
            &meta(false),
        );
        assert_eq!(
            failed.message,
            "Snowflake statement failed: Object 'T' does not exist (code 002003, SQL state 02000)"
        );
        let gone = polled(Err(SERVICE.status("statement status check", 404, "gone", None)), &meta(false)).unwrap();
        assert!(gone.message.contains("statement 01b2"), "{}", gone.message);
    }

    #[test]
    fn results_are_a_real_structured_dataset() {
        let r = resource_for(&answer(200, json!({})), &meta(true));
        assert_eq!(
            r.output_values().unwrap()["results"],
            Value::StructuredDataset {
                uri: "snowflake://u:xy12345-us-east-1/wh/db/s/01b2".into(),
                format: String::new()
            }
        );
        assert!(resource_for(&answer(200, json!({})), &meta(false)).outputs.is_none());
    }

    #[test]
    fn python_metas_decode() {
        let py = r#"{"user": "dummy_user", "account": "dummy_account", "database": "dummy_database", "schema": "dummy_schema", "warehouse": "dummy_warehouse", "query_id": "dummy_id", "has_output": false}"#;
        let m: SnowflakeMeta = serde_json::from_str(py).unwrap();
        assert_eq!((m.query_id.as_str(), m.has_output), ("dummy_id", false));
    }
}
