//! Reading task templates and inputs from files: protobuf binary (what `pyflyte` writes)
//! or the protobuf JSON mapping, told apart by their first byte.
//!
//! A template file may hold a `flyteidl.core.TaskTemplate` or a `flyteidl.admin.TaskSpec`
//! (`pyflyte package` writes TaskSpecs), or, in protobuf JSON, flyte-sdk's
//! `flyteidl2.core.TaskTemplate` (whose interface lists variables as key/value entries). The two binary encodings can both decode
//! from the same bytes, so the task type given on the command line picks the reading
//! whose `type` matches it.

use std::path::Path;

use agent_core::pb::{FILE_DESCRIPTOR_SET, core};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};

/// `flyteidl.admin.TaskSpec`, reduced to the field agentctl needs (`template = 1`); the
/// admin protocol files this workspace compiles do not include it.
#[derive(Clone, PartialEq, Message)]
struct TaskSpec {
    #[prost(message, optional, tag = "1")]
    template: Option<core::TaskTemplate>,
}

/// A file that could not be used, with a message naming it and saying why.
#[derive(Debug)]
pub(crate) struct InputError(pub(crate) String);

fn read(path: &Path, what: &str) -> Result<Vec<u8>, InputError> {
    std::fs::read(path).map_err(|e| InputError(format!("cannot read the {what} file {}: {e}", path.display())))
}

fn is_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Decodes protobuf JSON into the message `name` of the committed descriptors.
fn from_json<M: Message + Default>(json: serde_json::Value, name: &str) -> Result<M, String> {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).map_err(|e| format!("descriptors: {e}"))?;
    let desc = pool.get_message_by_name(name).ok_or_else(|| format!("{name} is not in the descriptors"))?;
    let dynamic = DynamicMessage::deserialize(desc, json).map_err(|e| e.to_string())?;
    dynamic.transcode_to::<M>().map_err(|e| e.to_string())
}

/// The task template in `path`, for task type `task_type`.
pub(crate) fn template(path: &Path, task_type: &str) -> Result<core::TaskTemplate, InputError> {
    let bytes = read(path, "template")?;
    let bad = |why: String| InputError(format!("{} is not a task template: {why}", path.display()));
    if is_json(&bytes) {
        let mut json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        // A TaskSpec's JSON has the template under "template".
        if json.get("template").is_some() && json.get("type").is_none() {
            json = json["template"].take();
        }
        // flyte-sdk's JSON is Flyte 2's message, which shares Flyte 1's field numbers (a map
        // and a list of key/value entries are one encoding): read as it is, carried over in binary.
        return from_json(json.clone(), "flyteidl.core.TaskTemplate")
            .or_else(|flyte1| {
                let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).map_err(|e| format!("descriptors: {e}"))?;
                let desc = pool.get_message_by_name("flyteidl2.core.TaskTemplate").ok_or(flyte1.clone())?;
                let flyte2 = DynamicMessage::deserialize(desc, json).map_err(|_| flyte1)?;
                core::TaskTemplate::decode(flyte2.encode_to_vec().as_slice()).map_err(|e| e.to_string())
            })
            .map_err(bad);
    }
    let readings: Vec<core::TaskTemplate> = [
        core::TaskTemplate::decode(bytes.as_slice()).ok(),
        TaskSpec::decode(bytes.as_slice()).ok().and_then(|s| s.template),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(t) = readings.iter().find(|t| t.r#type == task_type) {
        return Ok(t.clone());
    }
    match readings.into_iter().find(|t| !t.r#type.is_empty()) {
        Some(t) => Err(InputError(format!(
            "{} holds a template of task type '{}', not '{task_type}'",
            path.display(),
            t.r#type
        ))),
        None => Err(bad("neither a TaskTemplate nor a TaskSpec in protobuf binary or JSON".into())),
    }
}

/// The task inputs (a `flyteidl.core.LiteralMap`) in `path`.
pub(crate) fn inputs(path: &Path) -> Result<core::LiteralMap, InputError> {
    let bytes = read(path, "inputs")?;
    let bad = |why: String| InputError(format!("{} is not a LiteralMap: {why}", path.display()));
    if is_json(&bytes) {
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        return from_json(json, "flyteidl.core.LiteralMap").map_err(bad);
    }
    core::LiteralMap::decode(bytes.as_slice()).map_err(|e| bad(e.to_string()))
}

/// `--secret` values: `KEY=VALUE`, or `KEY=@FILE` for a value read from a file (a PEM key,
/// say). Errors name the key, never the value.
pub(crate) fn secrets(args: &[String]) -> Result<Vec<(String, String)>, InputError> {
    args.iter()
        .map(|arg| {
            let Some((key, value)) = arg.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
                return Err(InputError("--secret takes KEY=VALUE or KEY=@FILE (the key is missing)".into()));
            };
            let value = match value.strip_prefix('@') {
                Some(file) => String::from_utf8(read(Path::new(file), &format!("secret '{key}'"))?)
                    .map_err(|_| InputError(format!("the secret '{key}' file {file} is not UTF-8 text")))?,
                None => value.to_owned(),
            };
            Ok((key.trim().to_owned(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn sample() -> core::TaskTemplate {
        core::TaskTemplate {
            id: Some(core::Identifier { project: "flytesnacks".into(), name: "t".into(), ..Default::default() }),
            r#type: "chatgpt".into(),
            ..Default::default()
        }
    }

    #[test]
    fn binary_template_and_task_spec_are_both_read() {
        let dir = std::env::temp_dir().join(format!("agentctl-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = sample();
        let plain = write(&dir, "t.pb", &t.encode_to_vec());
        let spec = write(&dir, "spec.pb", &TaskSpec { template: Some(t.clone()) }.encode_to_vec());
        assert_eq!(template(&plain, "chatgpt").unwrap(), t);
        assert_eq!(template(&spec, "chatgpt").unwrap(), t);
        let err = template(&plain, "snowflake").unwrap_err().0;
        assert!(err.contains("task type 'chatgpt', not 'snowflake'"), "{err}");
    }

    #[test]
    fn json_templates_inputs_and_bad_files() {
        let dir = std::env::temp_dir().join(format!("agentctl-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = write(&dir, "t.json", br#"{"template": {"type": "chatgpt", "custom": {"a": 1}}}"#);
        let got = template(&t, "chatgpt").unwrap();
        assert_eq!(got.r#type, "chatgpt");
        assert!(got.custom.unwrap().fields.contains_key("a"));
        let i =
            write(&dir, "i.json", br#"{"literals": {"message": {"scalar": {"primitive": {"stringValue": "hi"}}}}}"#);
        assert!(inputs(&i).unwrap().literals.contains_key("message"));

        let missing = template(&dir.join("nope.pb"), "x").unwrap_err().0;
        assert!(missing.contains("cannot read the template file"), "{missing}");
        let typo = write(&dir, "typo.json", br#"{"literals": {"m": {"scalr": {}}}}"#);
        let err = inputs(&typo).unwrap_err().0;
        assert!(err.contains("is not a LiteralMap") && err.contains("scalr"), "{err}");
        let junk = write(&dir, "junk.pb", b"\xff\xff\xff");
        assert!(template(&junk, "x").unwrap_err().0.contains("neither a TaskTemplate nor a TaskSpec"));
    }

    /// The samples flyte-sdk serialized (Flyte 2's JSON) read as the same template.
    #[test]
    fn flyte_sdk_templates_are_read() {
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/flyte2");
        let t = template(&samples.join("databricks.template.json"), "databricks").unwrap();
        assert_eq!(t.r#type, "databricks");
        let declared = t.interface.as_ref().and_then(|i| i.inputs.as_ref()).unwrap();
        assert!(declared.variables.contains_key("n"), "{declared:?}");
        let custom = agent_core::json::struct_to_json(t.custom.as_ref().unwrap());
        assert_eq!(custom["secrets"]["databricks_token"], "databricks-token");
        assert!(custom["databricksConf"]["new_cluster"].is_object());
        let sf = template(&samples.join("snowflake.template.json"), "snowflake").unwrap();
        assert!(matches!(sf.target, Some(core::task_template::Target::Sql(_))));
        assert_eq!(inputs(&samples.join("snowflake.inputs.json")).unwrap().literals.len(), 2);
    }

    #[test]
    fn secrets_come_inline_or_from_files_and_errors_name_no_value() {
        let dir = std::env::temp_dir().join(format!("agentctl-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = write(&dir, "key.p8", b"-----BEGIN PRIVATE KEY-----\nabc\n");
        let args = vec!["FLYTE_OPENAI_API_KEY=sk-a=b".to_owned(), format!("snowflake_private_key=@{}", pem.display())];
        let got = secrets(&args).unwrap();
        assert_eq!(got[0], ("FLYTE_OPENAI_API_KEY".to_owned(), "sk-a=b".to_owned()));
        assert!(got[1].1.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(secrets(&["=value-only".to_owned()]).unwrap_err().0.contains("the key is missing"));
        let missing = secrets(&["k=@/nonexistent/file".to_owned()]).unwrap_err().0;
        assert!(missing.contains("secret 'k'"), "{missing}");
    }
}
