//! The Snowflake agent: `create` submits the statement asynchronously, `get` reads its
//! status, `delete` cancels it.

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use agent_core::literals::Value;
use agent_core::prelude::*;

use crate::account::{Allowed, check_name};
use crate::bindings::translate;
use crate::client::{Account, Answer, Client, to_agent_error};
use crate::config::Config;

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
    /// The names a forged meta could abuse, checked as the template's are.
    fn check_names(&self) -> Result<(), AgentError> {
        let names = [
            ("user", &self.user),
            ("warehouse", &self.warehouse),
            ("database", &self.database),
            ("schema", &self.schema),
        ];
        for (key, value) in names {
            check_name(value, &format!("resource meta {key}"))?;
        }
        Ok(())
    }
}

/// What a status answer says.
#[derive(Debug, PartialEq, Eq)]
enum Status<'a> {
    /// 202: accepted, queued or running (the SQL API does not tell them apart).
    InProgress,
    /// 200.
    Succeeded,
    /// 422 with code 000604.
    Cancelled,
    /// 422: the statement failed.
    Failed { code: &'a str, sql_state: &'a str, message: &'a str },
    /// 404: Snowflake does not know the handle.
    NotFound,
    /// Any other answer code.
    Unknown(u16),
}

fn status_of(a: &Answer) -> Status<'_> {
    let field = |k: &str| a.body.get(k).and_then(Json::as_str).unwrap_or_default();
    match a.status {
        202 => Status::InProgress,
        200 => Status::Succeeded,
        422 if field("code") == "000604" => Status::Cancelled,
        422 => Status::Failed { code: field("code"), sql_state: field("sqlState"), message: field("message") },
        404 => Status::NotFound,
        other => Status::Unknown(other),
    }
}

/// flytekit's link: account `xy12345-us-east-1` → region `us-east-1`, account `xy12345`.
fn query_link(account: &str, query_id: &str) -> LogLink {
    let mut parts = account.splitn(2, '-');
    let acct = parts.next().unwrap_or_default();
    let region = parts.next().unwrap_or_default();
    LogLink::new(
        "Snowflake Query Details",
        format!("https://app.snowflake.com/{region}/{acct}/#/compute/history/queries/{query_id}/detail"),
    )
}

fn resource_for(a: &Answer, meta: &SnowflakeMeta) -> Resource {
    let link = query_link(&meta.account, &meta.query_id);
    let r = match status_of(a) {
        Status::InProgress => Resource::running()
            .with_message(a.body.get("message").and_then(Json::as_str).unwrap_or("running").to_owned()),
        Status::Succeeded => {
            let mut r = Resource::succeeded().with_message("Statement executed successfully.");
            if meta.has_output {
                let uri = format!(
                    "snowflake://{}:{}/{}/{}/{}/{}",
                    meta.user, meta.account, meta.warehouse, meta.database, meta.schema, meta.query_id
                );
                r = r.with_output("results", Value::StructuredDataset { uri, format: String::new() });
            }
            r
        }
        Status::Cancelled => Resource::aborted("the statement was cancelled"),
        Status::Failed { code, sql_state, message } => {
            Resource::failed(format!("Snowflake statement failed: {message} (code {code}, SQL state {sql_state})"))
                .with_failure(FailureDetail { code: code.to_owned(), recoverable: false, origin: FailureOrigin::User })
        }
        Status::NotFound => Resource::failed(format!("Snowflake has no statement {}", meta.query_id)),
        Status::Unknown(code) => Resource::running()
            .with_message(format!("Snowflake answered HTTP {code}, which this agent does not know; waiting")),
    };
    r.with_log_link(link)
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
}

/// A request id per task attempt, so a repeated CreateTask finds its statement.
fn request_id(task: &TaskRequest) -> String {
    task.attempt_id_or_random("snowflake").to_string()
}

impl AsyncAgent for SnowflakeAgent {
    type Meta = SnowflakeMeta;

    fn name(&self) -> &str {
        "Snowflake Connector"
    }

    fn task_categories(&self) -> Vec<TaskCategory> {
        vec![TaskCategory::new(TASK_TYPE, 0)]
    }

    async fn create(&self, ctx: &Context, task: TaskRequest) -> Result<SnowflakeMeta, AgentError> {
        let config = &task.template.config;
        let get = |k: &str| config.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        for required in ["account", "user"] {
            if get(required).is_empty() {
                return Err(AgentError::invalid_argument(format!(
                    "template.config.{required}: missing; set SnowflakeConfig({required}=...) on the task"
                )));
            }
        }
        let (account, user) = (get("account"), get("user"));
        let account_id = self.allowed.check(&account, "template.config.account")?;
        for key in ["user", "warehouse", "database", "schema"] {
            check_name(&get(key), &format!("template.config.{key}"))?;
        }
        let (statement, bindings) = translate(task.sql_statement()?, &task)?;
        let mut body = json!({"statement": statement, "database": get("database"), "schema": get("schema"), "warehouse": get("warehouse")});
        if !bindings.is_empty() {
            body["bindings"] = Json::Object(bindings);
        }
        if self.config.statement_timeout_secs > 0 {
            body["timeout"] = json!(self.config.statement_timeout_secs);
        }
        if let Some(role) = &self.config.role {
            body["role"] = json!(role);
        }
        let who = Account { account: &account_id, user: &user };
        let id = request_id(&task);
        let answer = self
            .client
            .call(ctx, who, Method::POST, "/api/v2/statements", &[("async", "true"), ("requestId", &id)], Some(&body))
            .await
            .map_err(|e| to_agent_error(e, "statement submission"))?;
        // A statement that fails at once (e.g. bad SQL) still has a handle; get reports it.
        let handle =
            answer.body.get("statementHandle").and_then(Json::as_str).filter(|h| !h.is_empty()).ok_or_else(|| {
                let message = answer.body.get("message").and_then(Json::as_str).unwrap_or("no message");
                AgentError::internal(format!(
                    "Snowflake accepted the statement without a handle (HTTP {}): {message}",
                    answer.status
                ))
            })?;
        Ok(SnowflakeMeta {
            user,
            account,
            database: get("database"),
            schema: get("schema"),
            warehouse: get("warehouse"),
            query_id: handle.to_owned(),
            has_output: task.declares_output("results"),
        })
    }

    async fn get(&self, ctx: &Context, meta: SnowflakeMeta) -> Result<Resource, AgentError> {
        let account = self.allowed.check(&meta.account, "resource meta account")?;
        meta.check_names()?;
        let who = Account { account: &account, user: &meta.user };
        let path = format!("/api/v2/statements/{}", agent_core::http::path_id("query_id", &meta.query_id)?);
        match self.client.call(ctx, who, Method::GET, &path, &[], None).await {
            Ok(answer) => Ok(resource_for(&answer, &meta)),
            Err(e) if e.is_transient() => Ok(Resource::unreachable("Snowflake", "statement", &e.describe())
                .with_log_link(query_link(&meta.account, &meta.query_id))),
            Err(e) => Err(to_agent_error(e, "statement status check")),
        }
    }

    async fn delete(&self, ctx: &Context, meta: SnowflakeMeta) -> Result<(), AgentError> {
        let account = self.allowed.check(&meta.account, "resource meta account")?;
        meta.check_names()?;
        let who = Account { account: &account, user: &meta.user };
        let path = format!("/api/v2/statements/{}/cancel", agent_core::http::path_id("query_id", &meta.query_id)?);
        // Finished (422) and unknown (404) statements need no cancelling.
        self.client
            .call(ctx, who, Method::POST, &path, &[], None)
            .await
            .map(|_| ())
            .map_err(|e| to_agent_error(e, "statement cancel"))
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
        let cases = [
            (answer(202, json!({"code": "333334"})), Phase::Running),
            (answer(200, json!({"code": "090001"})), Phase::Succeeded),
            (answer(422, json!({"code": "000604", "message": "SQL execution canceled"})), Phase::Aborted),
            (
                answer(422, json!({"code": "002003", "sqlState": "02000", "message": "Object 'T' does not exist"})),
                Phase::Failed,
            ),
            (answer(404, json!({"code": "000709"})), Phase::Failed),
            (answer(201, json!({})), Phase::Running),
        ];
        for (a, phase) in cases {
            let r = resource_for(&a, &meta(false));
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
