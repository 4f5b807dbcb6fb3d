//! Shared test code.

#[allow(dead_code)]
pub(crate) mod test_agent;

use agent_core::json::json_to_struct;
use agent_core::literals::{Value, values_to_literal_map};
use agent_core::pb::core;
use agent_core::prelude::TaskRequest;

/// A request for `task_type` with `custom` settings (see `test_agent`) and `inputs`.
#[allow(dead_code)]
pub(crate) fn task(task_type: &str, custom: serde_json::Value, inputs: &[(&str, Value)]) -> TaskRequest {
    TaskRequest {
        template: core::TaskTemplate {
            r#type: task_type.into(),
            custom: Some(json_to_struct(custom.as_object().expect("custom is a JSON object"))),
            ..Default::default()
        },
        inputs: values_to_literal_map(inputs.iter().cloned()),
        output_prefix: "s3://bucket/prefix/0".into(),
        metadata: None,
    }
}
