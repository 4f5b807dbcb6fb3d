//! The `runs/submit` body, built from the template as flytekit builds it: the task's
//! `databricksConf` plus compute setup (classic cluster or serverless environment), the
//! entrypoint (a Python file from git, or a notebook) and the container's command line.

use serde_json::{Map, Value as Json, json};

use agent_core::pb::core::task_template::Target;
use agent_core::prelude::*;

/// flytekit's entrypoint repository, used when the task names no `git_source`.
const DEFAULT_GIT_SOURCE: (&str, &str, &str) =
    ("https://github.com/flyteorg/flytetools", "gitHub", "572298df1f971fb58c258398bd70a6372f811c96");
const CLASSIC_ENTRYPOINT: &str = "flytekitplugins/databricks/entrypoint.py";
const SERVERLESS_ENTRYPOINT: &str = "flytekitplugins/databricks/entrypoint_serverless.py";

/// flyte-sdk's entrypoint (Flyte 2) and the flytetools commit that has it.
const FLYTE2_GIT_SOURCE: (&str, &str, &str) =
    ("https://github.com/flyteorg/flytetools", "gitHub", "194364210c47c49ce66c419e8fb68d6f9c06fd7e");
const FLYTE2_ENTRYPOINT: &str = "flyteplugins/databricks/entrypoint.py";

/// The error flytekit gives, with all four accepted keys.
pub(crate) const NO_COMPUTE: &str = "template.custom.databricksConf: no compute configuration found. Provide one of: \
    'existing_cluster_id' (classic), 'new_cluster' (classic), 'environment_key' (serverless), or 'environments' (serverless)";

/// Builds the submit body. `custom` is the template's custom (integral numbers already
/// integers); `provider` is the agent's default serverless credential provider.
pub(crate) fn job_spec(
    task: &TaskRequest,
    custom: &Map<String, Json>,
    provider: Option<&str>,
) -> Result<Map<String, Json>, AgentError> {
    let mut conf = match custom.get("databricksConf") {
        Some(Json::Object(c)) => c.clone(),
        None | Some(Json::Null) => Map::new(),
        Some(_) => return Err(AgentError::invalid_argument("template.custom.databricksConf: must be an object")),
    };
    let classic = conf.contains_key("existing_cluster_id") || conf.contains_key("new_cluster");
    if !classic && !conf.contains_key("environment_key") && !conf.contains_key("environments") {
        return Err(AgentError::invalid_argument(NO_COMPUTE));
    }

    let container = match &task.template.target {
        Some(Target::Container(c)) => Some(c),
        _ => None,
    };
    let args = container.map(|c| c.args.clone()).unwrap_or_default();
    let mut env: Map<_, _> =
        container.iter().flat_map(|c| &c.env).map(|kv| (kv.key.clone(), json!(kv.value))).collect();
    // pyflyte must exit non-zero when the task fails, or Databricks reports success.
    env.insert("FLYTE_FAIL_ON_ERROR".into(), json!("true"));

    // Compute: the container's image and environment for a new classic cluster; for
    // serverless, the environment the task runs in (made if the task names none).
    let environment_key = if classic {
        if let Some(Json::Object(cluster)) = conf.get_mut("new_cluster") {
            if let Some(c) = container {
                cluster.entry("docker_image").or_insert_with(|| json!({"url": c.image}));
            }
            let spark_conf = || custom.get("sparkConf").cloned().unwrap_or_else(|| json!({}));
            cluster.entry("spark_conf").or_insert_with(spark_conf);
            match cluster.entry("spark_env_vars").or_insert_with(|| json!({})) {
                Json::Object(existing) => existing.extend(env.clone()),
                other => *other = Json::Object(env.clone()),
            }
        }
        None
    } else {
        let key = if let Some(Json::String(k)) = conf.remove("environment_key") { k } else { "default".to_owned() };
        let Json::Array(list) = conf.entry("environments").or_insert_with(|| json!([])) else {
            return Err(AgentError::invalid_argument("template.custom.databricksConf.environments: must be a list"));
        };
        let named = |e: &Json| e.get("environment_key").and_then(Json::as_str) == Some(key.as_str());
        if !list.iter().any(named) {
            list.push(json!({"environment_key": key, "spec": {"client": "1"}}));
        }
        for entry in list.iter_mut().filter(|e| named(e)).filter_map(Json::as_object_mut) {
            if let Json::Object(spec) = entry.entry("spec").or_insert_with(|| json!({}))
                && let Json::Object(vars) = spec.entry("environment_vars").or_insert_with(|| json!({}))
            {
                // Flyte's variables win over the task's.
                vars.extend(env.clone());
            }
        }
        Some(key)
    };

    // The entrypoint: a notebook, else a Python file from git (flytekit's by default).
    let (field, task_key, entry) = match custom.get("notebookPath").and_then(Json::as_str).filter(|p| !p.is_empty()) {
        Some(path) => {
            let mut notebook = json!({"notebook_path": path});
            if let Some(p) = custom.get("notebookBaseParameters").filter(|p| !p.is_null()) {
                notebook["base_parameters"] = p.clone();
            }
            if conf.contains_key("git_source") {
                notebook["source"] = json!("GIT");
            }
            ("notebook_task", "flyte_notebook_task", notebook)
        }
        None => {
            let git_source = conf.remove("git_source").unwrap_or_else(|| {
                let (url, provider, commit) = DEFAULT_GIT_SOURCE;
                json!({"git_url": url, "git_provider": provider, "git_commit": commit})
            });
            conf.insert("git_source".into(), git_source);
            let default = if environment_key.is_some() { SERVERLESS_ENTRYPOINT } else { CLASSIC_ENTRYPOINT };
            let file = conf.remove("python_file").unwrap_or_else(|| json!(default));
            let mut params = args;
            let provider = custom.get("databricksServiceCredentialProvider").and_then(Json::as_str).or(provider);
            if let (Some(_), Some(p)) = (&environment_key, provider.filter(|p| !p.is_empty())) {
                params.push(format!("--flyte-credential-provider={p}"));
            }
            ("spark_python_task", "flyte_task", json!({"python_file": file, "source": "GIT", "parameters": params}))
        }
    };
    match environment_key {
        None => conf.insert(field.into(), entry),
        Some(key) => conf.insert("tasks".into(), json!([{"task_key": task_key, field: entry, "environment_key": key}])),
    };
    Ok(conf)
}

/// Builds the submit body of a flyte-sdk task (Flyte 2) as flyte-sdk's connector does: the
/// task's `databricksConf` on a classic cluster (an existing one is used as it is; a new one
/// gets the container's image, the task's `sparkConf` and the container's environment where
/// the task left them unset, the environment winning over the task's variables), flyte-sdk's
/// entrypoint from flytetools with the container's arguments. Nothing is injected: flyte-sdk's
/// runtime exits non-zero on a failure by itself.
pub(crate) fn flyte2_job_spec(task: &TaskRequest, custom: &Map<String, Json>) -> Result<Map<String, Json>, AgentError> {
    let mut conf = match custom.get("databricksConf") {
        Some(Json::Object(c)) => c.clone(),
        None | Some(Json::Null) => {
            return Err(AgentError::invalid_argument(
                "template.custom.databricksConf: missing; set databricks_conf on the task's Databricks plugin config",
            ));
        }
        Some(_) => return Err(AgentError::invalid_argument("template.custom.databricksConf: must be an object")),
    };
    let container = match &task.template.target {
        Some(Target::Container(c)) => Some(c),
        _ => None,
    };
    // Python's truthiness, which decides what flyte-sdk fills in: absent, null, empty or zero.
    let unset = |v: Option<&Json>| match v {
        None | Some(Json::Null) => true,
        Some(Json::Bool(b)) => !b,
        Some(Json::String(s)) => s.is_empty(),
        Some(Json::Object(m)) => m.is_empty(),
        Some(Json::Array(a)) => a.is_empty(),
        Some(Json::Number(n)) => n.as_f64() == Some(0.0),
    };
    // flyte-sdk fills a new cluster in only when no existing one is named at all.
    if conf.get("existing_cluster_id").is_none_or(Json::is_null) {
        let Some(Json::Object(cluster)) = conf.get_mut("new_cluster") else {
            return Err(AgentError::invalid_argument(
                "template.custom.databricksConf: set existing_cluster_id or new_cluster (an object)",
            ));
        };
        if unset(cluster.get("docker_image")) {
            let image = container.map(|c| c.image.as_str()).unwrap_or_default();
            cluster.insert("docker_image".into(), json!({"url": image}));
        }
        if unset(cluster.get("spark_conf")) {
            cluster.insert("spark_conf".into(), custom.get("sparkConf").cloned().unwrap_or_else(|| json!({})));
        }
        let env = container.iter().flat_map(|c| &c.env).map(|kv| (kv.key.clone(), json!(kv.value)));
        match cluster.get_mut("spark_env_vars") {
            Some(Json::Object(vars)) if !vars.is_empty() => vars.extend(env),
            _ => drop(cluster.insert("spark_env_vars".into(), Json::Object(env.collect()))),
        }
    }
    let args = container.map(|c| c.args.clone()).unwrap_or_default();
    conf.insert(
        "spark_python_task".into(),
        json!({"python_file": FLYTE2_ENTRYPOINT, "parameters": args, "source": "GIT"}),
    );
    let (url, provider, commit) = FLYTE2_GIT_SOURCE;
    conf.insert("git_source".into(), json!({"git_url": url, "git_provider": provider, "git_commit": commit}));
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use agent_core::pb::core::{Container, KeyValuePair, TaskTemplate};

    use super::*;

    fn task() -> TaskRequest {
        TaskRequest {
            template: TaskTemplate {
                target: Some(Target::Container(Container {
                    image: "flyteorg/flytekit:spark".into(),
                    args: vec!["pyflyte-execute".into(), "--inputs".into(), "s3://x/inputs.pb".into()],
                    env: vec![KeyValuePair { key: "foo".into(), value: "bar".into() }],
                    ..Default::default()
                })),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn custom(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    /// The body flyte-sdk 2.12.1's connector submits for this template (captured from it):
    /// its entrypoint and commit, the container's arguments, image and environment.
    #[test]
    fn flyte2_runs_are_built_as_flyte_sdk_builds_them() {
        let sdk = custom(json!({
            "databricksConf": {"run_name": "my_job", "timeout_seconds": 3600,
                               "new_cluster": {"node_type_id": "i3.xlarge", "num_workers": 2,
                                               "spark_env_vars": {"A": "1", "foo": "task"},
                                               "spark_version": "13.3.x-scala2.12"}},
            "sparkConf": {"spark.executor.memory": "4g"},
            "secrets": {"databricks_token": "databricks_token_secret"},
            "databricksInstance": "myorg.cloud.databricks.com",
            "executorPath": "/opt/venv/bin/python",
        }));
        let spec = flyte2_job_spec(&task(), &sdk).unwrap();
        assert_eq!(
            Json::Object(spec),
            json!({
                "run_name": "my_job", "timeout_seconds": 3600,
                "new_cluster": {"node_type_id": "i3.xlarge", "num_workers": 2, "spark_version": "13.3.x-scala2.12",
                                "docker_image": {"url": "flyteorg/flytekit:spark"},
                                "spark_conf": {"spark.executor.memory": "4g"},
                                "spark_env_vars": {"A": "1", "foo": "bar"}},
                "spark_python_task": {"python_file": "flyteplugins/databricks/entrypoint.py", "source": "GIT",
                                      "parameters": ["pyflyte-execute", "--inputs", "s3://x/inputs.pb"]},
                "git_source": {"git_url": "https://github.com/flyteorg/flytetools", "git_provider": "gitHub",
                               "git_commit": "194364210c47c49ce66c419e8fb68d6f9c06fd7e"},
            })
        );
        // An existing cluster is used as it is; the task's own git source and file are replaced.
        let existing =
            custom(json!({"databricksConf": {"existing_cluster_id": "0101-x", "git_source": {"git_url": "u"},
                                                         "spark_python_task": {"python_file": "mine.py"}}}));
        let spec = flyte2_job_spec(&task(), &existing).unwrap();
        assert_eq!(spec["existing_cluster_id"], "0101-x");
        assert_eq!(spec["git_source"]["git_commit"], "194364210c47c49ce66c419e8fb68d6f9c06fd7e");
        assert_eq!(spec["spark_python_task"]["python_file"], "flyteplugins/databricks/entrypoint.py");
        assert!(spec.get("new_cluster").is_none());
        // No FLYTE_FAIL_ON_ERROR: flytekit's entrypoint needs it, flyte-sdk's does not.
        let plain = custom(json!({"databricksConf": {"new_cluster": {"spark_env_vars": {}}}}));
        let spec = flyte2_job_spec(&task(), &plain).unwrap();
        assert_eq!(spec["new_cluster"]["spark_env_vars"], json!({"foo": "bar"}));
        assert_eq!(spec["new_cluster"]["spark_conf"], json!({}));
        // An existing cluster named even as "" is left to Databricks to judge, as flyte-sdk does.
        let empty = custom(json!({"databricksConf": {"existing_cluster_id": "", "new_cluster": {"num_workers": 1}}}));
        assert_eq!(flyte2_job_spec(&task(), &empty).unwrap()["new_cluster"], json!({"num_workers": 1}));
        for (bad, why) in [
            (json!({}), "databricksConf: missing"),
            (json!({"databricksConf": []}), "must be an object"),
            (json!({"databricksConf": {"run_name": "x"}}), "existing_cluster_id or new_cluster"),
            (json!({"databricksConf": {"new_cluster": "big"}}), "existing_cluster_id or new_cluster"),
        ] {
            let e = flyte2_job_spec(&task(), &custom(bad)).unwrap_err();
            assert!(matches!(&e, AgentError::InvalidArgument(m) if m.contains(why)), "{e:?}");
        }
    }

    #[test]
    fn classic_new_cluster_gets_image_conf_env_and_the_entrypoint() {
        let c = custom(json!({
            "sparkConf": {"spark.driver.memory": "1000M"},
            "databricksConf": {"run_name": "flytekit databricks plugin example", "new_cluster": {
                "spark_version": "12.2.x-scala2.12", "node_type_id": "n2-highmem-4", "num_workers": 1}, "timeout_seconds": 3600, "max_retries": 1},
            "databricksInstance": "test-account.cloud.databricks.com",
        }));
        let spec = job_spec(&task(), &c, None).unwrap();
        let cluster = &spec["new_cluster"];
        assert_eq!(cluster["docker_image"], json!({"url": "flyteorg/flytekit:spark"}));
        assert_eq!(cluster["spark_conf"], json!({"spark.driver.memory": "1000M"}));
        assert_eq!(cluster["spark_env_vars"], json!({"foo": "bar", "FLYTE_FAIL_ON_ERROR": "true"}));
        assert_eq!(cluster["num_workers"], json!(1));
        assert_eq!(serde_json::to_string(&spec["timeout_seconds"]).unwrap(), "3600", "integers stay integers");
        assert_eq!(
            spec["spark_python_task"],
            json!({"python_file": CLASSIC_ENTRYPOINT, "source": "GIT", "parameters": ["pyflyte-execute", "--inputs", "s3://x/inputs.pb"]})
        );
        assert_eq!(spec["git_source"]["git_url"], "https://github.com/flyteorg/flytetools");
    }

    #[test]
    fn existing_cluster_adds_nothing_and_user_env_is_kept() {
        let spec =
            job_spec(&task(), &custom(json!({"databricksConf": {"existing_cluster_id": "1234"}})), None).unwrap();
        assert!(spec.get("new_cluster").is_none());
        assert_eq!(spec["existing_cluster_id"], "1234");
        let c = custom(
            json!({"databricksConf": {"new_cluster": {"spark_env_vars": {"A": "1"}, "docker_image": {"url": "mine"}}}}),
        );
        let spec = job_spec(&task(), &c, None).unwrap();
        assert_eq!(
            spec["new_cluster"]["spark_env_vars"],
            json!({"A": "1", "foo": "bar", "FLYTE_FAIL_ON_ERROR": "true"})
        );
        assert_eq!(spec["new_cluster"]["docker_image"]["url"], "mine");
        assert_eq!(spec["new_cluster"]["spark_conf"], json!({}));
    }

    #[test]
    fn serverless_gets_an_environment_and_a_task() {
        let c = custom(
            json!({"databricksConf": {"environment_key": "gpu", "environments": [{"environment_key": "gpu", "spec": {"client": "2", "environment_vars": {"foo": "user", "X": "1"}}}]}}),
        );
        let spec = job_spec(&task(), &c, Some("my-provider")).unwrap();
        assert!(spec.get("environment_key").is_none() && spec.get("new_cluster").is_none());
        assert_eq!(
            spec["environments"][0]["spec"]["environment_vars"],
            json!({"foo": "bar", "X": "1", "FLYTE_FAIL_ON_ERROR": "true"})
        );
        assert_eq!(spec["environments"][0]["spec"]["client"], "2");
        let t = &spec["tasks"][0];
        assert_eq!((t["task_key"].as_str(), t["environment_key"].as_str()), (Some("flyte_task"), Some("gpu")));
        assert_eq!(t["spark_python_task"]["python_file"], SERVERLESS_ENTRYPOINT);
        assert_eq!(
            t["spark_python_task"]["parameters"].as_array().unwrap().last().unwrap(),
            "--flyte-credential-provider=my-provider"
        );
        assert!(spec.get("git_source").is_some());
        // No environments at all: a default one is added.
        let spec = job_spec(&task(), &custom(json!({"databricksConf": {"environment_key": "default"}})), None).unwrap();
        assert_eq!(spec["environments"][0]["environment_key"], "default");
        assert_eq!(spec["environments"][0]["spec"]["client"], "1");
    }

    #[test]
    fn user_git_source_and_python_file_win() {
        let git = json!({"git_url": "https://github.com/me/repo", "git_provider": "gitHub", "git_branch": "main"});
        let c = custom(
            json!({"databricksConf": {"existing_cluster_id": "1", "git_source": git, "python_file": "my/entry.py"}}),
        );
        let spec = job_spec(&task(), &c, None).unwrap();
        assert_eq!(spec["git_source"], git);
        assert_eq!(spec["spark_python_task"]["python_file"], "my/entry.py");
        assert!(spec.get("python_file").is_none());
    }

    #[test]
    fn notebook_mode_classic_and_serverless() {
        let c = custom(json!({"notebookPath": "/Users/me/nb", "notebookBaseParameters": {"a": "1"},
            "databricksConf": {"existing_cluster_id": "1", "git_source": {"git_url": "u", "git_provider": "gitHub"}}}));
        let spec = job_spec(&task(), &c, None).unwrap();
        assert_eq!(
            spec["notebook_task"],
            json!({"notebook_path": "/Users/me/nb", "base_parameters": {"a": "1"}, "source": "GIT"})
        );
        assert!(spec.get("spark_python_task").is_none());
        assert_eq!(spec["git_source"]["git_url"], "u");
        let c = custom(json!({"notebookPath": "/nb", "databricksConf": {"environments": []}}));
        let spec = job_spec(&task(), &c, None).unwrap();
        assert_eq!(spec["tasks"][0]["task_key"], "flyte_notebook_task");
        assert_eq!(spec["tasks"][0]["notebook_task"], json!({"notebook_path": "/nb"}));
    }

    #[test]
    fn no_compute_lists_the_four_keys() {
        let err = job_spec(&task(), &custom(json!({"databricksConf": {"run_name": "x"}})), None).unwrap_err();
        for k in ["existing_cluster_id", "new_cluster", "environment_key", "environments"] {
            assert!(err.message().contains(k), "{err}");
        }
        assert!(matches!(err, AgentError::InvalidArgument(_)));
    }
}
