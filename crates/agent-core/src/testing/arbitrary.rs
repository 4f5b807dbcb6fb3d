//! proptest strategies for hostile input: Flyte literals of every kind (nested, empty,
//! out-of-range timestamps, NaN), JSON for template `custom` structs and resource metas,
//! raw bytes. cargo-fuzz needs a nightly toolchain these machines do not have, so the
//! robustness checks generate their input with proptest instead.

use proptest::prelude::*;
use prost_types::{Duration as PbDuration, Timestamp};
use serde_json::{Map, Value as Json};

use crate::pb::core::{self, literal, primitive, scalar};

fn primitive() -> impl Strategy<Value = core::Primitive> {
    let value = prop_oneof![
        any::<i64>().prop_map(primitive::Value::Integer),
        prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(-0.0)]
            .prop_map(primitive::Value::FloatValue),
        any::<String>().prop_map(primitive::Value::StringValue),
        any::<bool>().prop_map(primitive::Value::Boolean),
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| primitive::Value::Datetime(Timestamp { seconds, nanos })),
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| primitive::Value::Duration(PbDuration { seconds, nanos })),
    ];
    prop::option::weighted(0.95, value).prop_map(|value| core::Primitive { value })
}

fn scalar() -> impl Strategy<Value = core::Scalar> {
    let value = prop_oneof![
        4 => primitive().prop_map(scalar::Value::Primitive),
        1 => Just(scalar::Value::NoneType(core::Void {})),
        1 => (prop::collection::vec(any::<u8>(), 0..64), any::<String>())
            .prop_map(|(value, tag)| scalar::Value::Binary(core::Binary { value, tag })),
        1 => any::<String>().prop_map(|uri| scalar::Value::StructuredDataset(core::StructuredDataset { uri, metadata: None })),
        1 => any::<String>().prop_map(|uri| scalar::Value::Blob(core::Blob { metadata: None, uri })),
        1 => json_object(2).prop_map(|m| scalar::Value::Generic(crate::json::json_to_struct(&m))),
    ];
    prop::option::weighted(0.95, value).prop_map(|value| core::Scalar { value })
}

/// Any Flyte literal, nested up to a few levels.
pub fn literal() -> impl Strategy<Value = core::Literal> {
    let leaf =
        scalar().prop_map(|s| core::Literal { value: Some(literal::Value::Scalar(Box::new(s))), ..Default::default() });
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|literals| core::Literal {
                value: Some(literal::Value::Collection(core::LiteralCollection { literals })),
                ..Default::default()
            }),
            prop::collection::hash_map(any::<String>(), inner, 0..4).prop_map(|literals| core::Literal {
                value: Some(literal::Value::Map(core::LiteralMap { literals })),
                ..Default::default()
            }),
            Just(core::Literal::default()),
        ]
    })
}

/// Task inputs: a few names (the usual ones among them) bound to any literals.
pub fn literal_map() -> impl Strategy<Value = core::LiteralMap> {
    let name = prop_oneof![
        Just("x".to_owned()),
        Just("message".to_owned()),
        Just("input_file_id".to_owned()),
        Just("n".to_owned()),
        any::<String>(),
    ];
    prop::collection::hash_map(name, literal(), 0..4).prop_map(|literals| core::LiteralMap { literals })
}

/// Keys agents read from templates and metas, so generated JSON hits real code paths.
const KEYS: &[&str] = &[
    "job_id",
    "run_id",
    "query_id",
    "batch_id",
    "project",
    "location",
    "ProjectID",
    "Location",
    "Domain",
    "databricks_instance",
    "databricksInstance",
    "databricksConf",
    "account",
    "user",
    "database",
    "schema",
    "warehouse",
    "has_output",
    "auth_type",
    "chatgpt_config",
    "config",
    "model",
    "openai_organization",
    "outcome",
    "duration_ms",
    "started_at_ms",
    "new_cluster",
    "existing_cluster_id",
    "run_name",
    "x",
];

fn json_scalar() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)),
        any::<String>().prop_map(Json::String),
    ]
}

fn json_value(depth: u32) -> impl Strategy<Value = Json> {
    json_scalar().prop_recursive(depth, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::vec((key(), inner), 0..4).prop_map(|kv| Json::Object(kv.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![4 => prop::sample::select(KEYS).prop_map(str::to_owned), 1 => any::<String>()]
}

/// A JSON object with agents' real keys (and others) bound to values of any type.
pub fn json_object(depth: u32) -> impl Strategy<Value = Map<String, Json>> {
    prop::collection::vec((key(), json_value(depth)), 0..6).prop_map(|kv| kv.into_iter().collect())
}

/// A resource meta as it might arrive: random bytes, broken JSON, or JSON objects with the
/// right keys and wrong values.
pub fn resource_meta() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        json_object(2).prop_map(|m| serde_json::to_vec(&m).unwrap_or_default()),
        json_value(2).prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        json_object(1).prop_map(|m| {
            let mut bytes = serde_json::to_vec(&m).unwrap_or_default();
            bytes.truncate(bytes.len() / 2);
            bytes
        }),
    ]
}

/// Draws `n` values from `strategy`, reproducibly (the same values every run, so a
/// failure in CI reproduces locally).
pub fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    use proptest::strategy::ValueTree as _;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    (0..n).filter_map(|_| strategy.new_tree(&mut runner).ok().map(|t| t.current())).collect()
}
