//! testbed: the test agents and the harnesses that run agents from outside, none of it
//! shipped. The library holds the test agents ([`test_agent`]) for integration tests; the
//! binaries are `test_agent` (a server hosting them, for the end-to-end suite, the demo
//! and the benchmark) and `bench` (the benchmark, and with `--soak` the soak).

pub mod test_agent;

use agent_core::json::json_to_struct;
use agent_core::literals::{Value, values_to_literal_map};
use agent_core::pb::core;
use agent_core::prelude::TaskRequest;

/// A request for `task_type` with `custom` settings (see [`test_agent`]) and `inputs`.
///
/// # Panics
/// When `custom` is not a JSON object.
pub fn task(task_type: &str, custom: serde_json::Value, inputs: &[(&str, Value)]) -> TaskRequest {
    TaskRequest {
        template: core::TaskTemplate {
            r#type: task_type.into(),
            custom: Some(json_to_struct(custom.as_object().expect("custom is a JSON object"))),
            ..Default::default()
        },
        inputs: values_to_literal_map(inputs.iter().cloned()),
        output_prefix: "s3://bucket/prefix/0".into(),
        metadata: None,
        declared_secrets: Default::default(),
    }
}
