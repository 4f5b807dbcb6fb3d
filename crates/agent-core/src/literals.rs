//! Flyte literals ⇄ plain values.
//!
//! Inputs arrive as a `LiteralMap`; agents want integers, strings and timestamps.
//! [`Value`] is the plain form of every literal an agent can act on, and
//! [`FromValue`] extracts typed values with errors that name the input.

use std::collections::{BTreeMap, HashMap};

use prost_types::{Duration, Timestamp};
use serde_json::{Map, Value as Json};

use crate::error::AgentError;
use crate::json::{json_to_struct, struct_to_json};
use crate::pb::core::{
    self, Binary, Blob, BlobMetadata, BlobType, Literal, LiteralCollection, LiteralMap, LiteralType, Primitive, Scalar,
    SimpleType, StructuredDataset, StructuredDatasetMetadata, StructuredDatasetType, Void, literal, literal_type,
    primitive, scalar,
};

/// The plain value of a literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None` / `Void`.
    None,
    /// 64-bit integer.
    Integer(i64),
    /// Double.
    Float(f64),
    /// String.
    String(String),
    /// Boolean.
    Boolean(bool),
    /// Point in time (UTC).
    Datetime(Timestamp),
    /// Length of time.
    Duration(Duration),
    /// Bytes with an optional tag (flytekit uses tags for msgpack-encoded dataclasses).
    Binary {
        /// The bytes.
        value: Vec<u8>,
        /// Type tag, often empty.
        tag: String,
    },
    /// A list.
    Collection(Vec<Value>),
    /// A string-keyed map.
    Map(BTreeMap<String, Value>),
    /// A table somewhere (e.g. `bq://project:dataset.table`).
    StructuredDataset {
        /// Where the table is.
        uri: String,
        /// Storage format, often empty.
        format: String,
    },
    /// A file or directory in blob storage.
    Blob {
        /// Where it is.
        uri: String,
        /// Format tag.
        format: String,
        /// A directory (multipart) rather than one file.
        multipart: bool,
    },
    /// A JSON object (`Scalar.generic`).
    Generic(Map<String, Json>),
}

impl Value {
    /// Short name of the kind of value, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Integer(_) => "integer",
            Self::Float(_) => "float",
            Self::String(_) => "string",
            Self::Boolean(_) => "boolean",
            Self::Datetime(_) => "datetime",
            Self::Duration(_) => "duration",
            Self::Binary { .. } => "binary",
            Self::Collection(_) => "collection",
            Self::Map(_) => "map",
            Self::StructuredDataset { .. } => "structured dataset",
            Self::Blob { .. } => "blob",
            Self::Generic(_) => "generic (struct)",
        }
    }

    /// Reads a literal. `path` names it in errors (e.g. `inputs.x`).
    pub fn from_literal(lit: &Literal, path: &str) -> Result<Self, AgentError> {
        let invalid = |what: &str| AgentError::invalid_argument(format!("{path}: {what}"));
        match &lit.value {
            None => Err(invalid("literal has no value")),
            Some(literal::Value::Scalar(s)) => Self::from_scalar(s, path),
            Some(literal::Value::Collection(c)) => c
                .literals
                .iter()
                .enumerate()
                .map(|(i, l)| Self::from_literal(l, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()
                .map(Self::Collection),
            Some(literal::Value::Map(m)) => m
                .literals
                .iter()
                .map(|(k, l)| Ok((k.clone(), Self::from_literal(l, &format!("{path}.{k}"))?)))
                .collect::<Result<_, AgentError>>()
                .map(Self::Map),
            Some(literal::Value::OffloadedMetadata(o)) => Err(invalid(&format!(
                "the value is offloaded to {} ({} bytes); offloaded literals are not supported by agents",
                o.uri, o.size_bytes
            ))),
        }
    }

    fn from_scalar(s: &Scalar, path: &str) -> Result<Self, AgentError> {
        let invalid = |what: &str| AgentError::invalid_argument(format!("{path}: {what}"));
        Ok(match &s.value {
            None => return Err(invalid("scalar has no value")),
            Some(scalar::Value::Primitive(p)) => match &p.value {
                None => return Err(invalid("primitive has no value")),
                Some(primitive::Value::Integer(i)) => Self::Integer(*i),
                Some(primitive::Value::FloatValue(f)) => Self::Float(*f),
                Some(primitive::Value::StringValue(s)) => Self::String(s.clone()),
                Some(primitive::Value::Boolean(b)) => Self::Boolean(*b),
                Some(primitive::Value::Datetime(t)) => Self::Datetime(*t),
                Some(primitive::Value::Duration(d)) => Self::Duration(*d),
            },
            Some(scalar::Value::Binary(b)) => Self::Binary { value: b.value.clone(), tag: b.tag.clone() },
            Some(scalar::Value::NoneType(_)) => Self::None,
            Some(scalar::Value::Generic(g)) => Self::Generic(struct_to_json(g)),
            Some(scalar::Value::StructuredDataset(d)) => Self::StructuredDataset {
                uri: d.uri.clone(),
                format: d
                    .metadata
                    .as_ref()
                    .and_then(|m| m.structured_dataset_type.as_ref())
                    .map(|t| t.format.clone())
                    .unwrap_or_default(),
            },
            Some(scalar::Value::Blob(b)) => {
                let ty = b.metadata.as_ref().and_then(|m| m.r#type.as_ref());
                Self::Blob {
                    uri: b.uri.clone(),
                    format: ty.map(|t| t.format.clone()).unwrap_or_default(),
                    multipart: ty
                        .is_some_and(|t| t.dimensionality == core::blob_type::BlobDimensionality::Multipart as i32),
                }
            }
            // A union literal carries the chosen variant's value.
            Some(scalar::Value::Union(u)) => match &u.value {
                Some(inner) => Self::from_literal(inner, path)?,
                None => return Err(invalid("union has no value")),
            },
            Some(scalar::Value::Schema(s)) => Self::StructuredDataset { uri: s.uri.clone(), format: String::new() },
            Some(scalar::Value::Error(e)) => {
                return Err(invalid(&format!(
                    "the value is an upstream error from node '{}': {}",
                    e.failed_node_id, e.message
                )));
            }
        })
    }

    /// Writes the literal form.
    pub fn to_literal(&self) -> Literal {
        let scalar = |v: scalar::Value| Literal {
            value: Some(literal::Value::Scalar(Box::new(Scalar { value: Some(v) }))),
            ..Default::default()
        };
        let prim = |v: primitive::Value| scalar(scalar::Value::Primitive(Primitive { value: Some(v) }));
        match self {
            Self::None => scalar(scalar::Value::NoneType(Void {})),
            Self::Integer(i) => prim(primitive::Value::Integer(*i)),
            Self::Float(f) => prim(primitive::Value::FloatValue(*f)),
            Self::String(s) => prim(primitive::Value::StringValue(s.clone())),
            Self::Boolean(b) => prim(primitive::Value::Boolean(*b)),
            Self::Datetime(t) => prim(primitive::Value::Datetime(*t)),
            Self::Duration(d) => prim(primitive::Value::Duration(*d)),
            Self::Binary { value, tag } => {
                scalar(scalar::Value::Binary(Binary { value: value.clone(), tag: tag.clone() }))
            }
            Self::Generic(m) => scalar(scalar::Value::Generic(json_to_struct(m))),
            Self::StructuredDataset { uri, format } => scalar(scalar::Value::StructuredDataset(StructuredDataset {
                uri: uri.clone(),
                metadata: Some(StructuredDatasetMetadata {
                    structured_dataset_type: Some(StructuredDatasetType {
                        format: format.clone(),
                        ..Default::default()
                    }),
                }),
            })),
            Self::Blob { uri, format, multipart } => scalar(scalar::Value::Blob(Blob {
                metadata: Some(BlobMetadata {
                    r#type: Some(BlobType {
                        format: format.clone(),
                        dimensionality: if *multipart {
                            core::blob_type::BlobDimensionality::Multipart as i32
                        } else {
                            core::blob_type::BlobDimensionality::Single as i32
                        },
                    }),
                }),
                uri: uri.clone(),
            })),
            Self::Collection(items) => Literal {
                value: Some(literal::Value::Collection(LiteralCollection {
                    literals: items.iter().map(Self::to_literal).collect(),
                })),
                ..Default::default()
            },
            Self::Map(m) => Literal {
                value: Some(literal::Value::Map(LiteralMap {
                    literals: m.iter().map(|(k, v)| (k.clone(), v.to_literal())).collect(),
                })),
                ..Default::default()
            },
        }
    }

    /// A JSON rendering for display (timestamps as RFC 3339, durations like `1.5s`,
    /// bytes as a length).
    pub fn to_json(&self) -> Json {
        match self {
            Self::None => Json::Null,
            Self::Integer(i) => Json::from(*i),
            Self::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
            Self::String(s) => Json::String(s.clone()),
            Self::Boolean(b) => Json::Bool(*b),
            Self::Datetime(t) => Json::String(t.to_string()),
            Self::Duration(d) => Json::String(d.to_string()),
            Self::Binary { value, .. } => Json::String(format!("<{} bytes>", value.len())),
            Self::Collection(items) => Json::Array(items.iter().map(Self::to_json).collect()),
            Self::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            Self::StructuredDataset { uri, .. } | Self::Blob { uri, .. } => Json::String(uri.clone()),
            Self::Generic(m) => Json::Object(m.clone()),
        }
    }
}

macro_rules! from_plain {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Self::$variant(v.into())
            }
        }
    )*};
}
from_plain!(i64 => Integer, i32 => Integer, f64 => Float, bool => Boolean, String => String, &str => String,
    Timestamp => Datetime, Duration => Duration);

impl From<std::time::SystemTime> for Value {
    fn from(t: std::time::SystemTime) -> Self {
        Self::Datetime(t.into())
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Self::Collection(v.into_iter().map(Into::into).collect())
    }
}

impl From<Value> for Literal {
    fn from(v: Value) -> Self {
        v.to_literal()
    }
}

/// A Rust type an input value can be read as.
pub trait FromValue: Sized {
    /// Human name of the expected type, for error messages.
    const EXPECTED: &'static str;
    /// Converts, or returns `None` if the value has another type.
    fn from_value(v: &Value) -> Option<Self>;
}

macro_rules! from_value {
    ($($t:ty, $name:literal, $pat:pat => $out:expr;)*) => {$(
        impl FromValue for $t {
            const EXPECTED: &'static str = $name;
            fn from_value(v: &Value) -> Option<Self> {
                match v {
                    $pat => Some($out),
                    _ => None,
                }
            }
        }
    )*};
}
from_value! {
    i64, "integer", Value::Integer(i) => *i;
    f64, "float", Value::Float(f) => *f;
    bool, "boolean", Value::Boolean(b) => *b;
    String, "string", Value::String(s) => s.clone();
    Timestamp, "datetime", Value::Datetime(t) => *t;
    Duration, "duration", Value::Duration(d) => *d;
    Vec<u8>, "binary", Value::Binary { value, .. } => value.clone();
    Map<String, Json>, "generic (struct)", Value::Generic(m) => m.clone();
}

impl<T: FromValue> FromValue for Vec<T> {
    const EXPECTED: &'static str = "collection";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Collection(items) => items.iter().map(T::from_value).collect(),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::None => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// A value of each simple type that declared type `t` admits, in order: `T` itself, or each
/// variant of a union such as `Optional[T]` (`Union[T, None]`); none for None, Error, Struct
/// and non-simple types. A `None` input carries no type of its own, so agents that must name
/// one for NULL (SQL parameters) type these samples as they would a real value.
pub fn declared_samples(t: &LiteralType) -> Vec<Value> {
    match &t.r#type {
        Some(literal_type::Type::Simple(s)) => SimpleType::try_from(*s).ok().and_then(sample).into_iter().collect(),
        Some(literal_type::Type::UnionType(u)) => u.variants.iter().flat_map(declared_samples).collect(),
        _ => Vec::new(),
    }
}

fn sample(t: SimpleType) -> Option<Value> {
    Some(match t {
        SimpleType::Integer => Value::Integer(0),
        SimpleType::Float => Value::Float(0.0),
        SimpleType::String => Value::String(String::new()),
        SimpleType::Boolean => Value::Boolean(false),
        SimpleType::Datetime => Value::Datetime(Timestamp::default()),
        SimpleType::Duration => Value::Duration(Duration::default()),
        SimpleType::Binary => Value::Binary { value: Vec::new(), tag: String::new() },
        SimpleType::None | SimpleType::Error | SimpleType::Struct => return None,
    })
}

/// Reads every literal of a map; `what` names the map in errors (`inputs`, `outputs`).
pub fn literal_map_to_values(map: &LiteralMap, what: &str) -> Result<BTreeMap<String, Value>, AgentError> {
    map.literals.iter().map(|(k, l)| Ok((k.clone(), Value::from_literal(l, &format!("{what}.{k}"))?))).collect()
}

/// Builds a literal map from named values.
pub fn values_to_literal_map<K: Into<String>, V: Into<Value>>(values: impl IntoIterator<Item = (K, V)>) -> LiteralMap {
    LiteralMap {
        literals: values.into_iter().map(|(k, v)| (k.into(), v.into().to_literal())).collect::<HashMap<_, _>>(),
    }
}

/// Reads one named input as `T`, with errors that name the input and both types.
pub fn get_input<T: FromValue>(inputs: &LiteralMap, name: &str) -> Result<T, AgentError> {
    let lit = inputs.literals.get(name).ok_or_else(|| {
        AgentError::invalid_argument(format!("inputs.{name}: missing; the task needs an input named '{name}'"))
    })?;
    let value = Value::from_literal(lit, &format!("inputs.{name}"))?;
    T::from_value(&value).ok_or_else(|| {
        AgentError::invalid_argument(format!("inputs.{name}: expected {}, got {}", T::EXPECTED, value.kind()))
    })
}

/// The JSON display of a literal map (used by the CLI and the demo).
pub fn literal_map_to_json(map: &LiteralMap) -> Result<Json, AgentError> {
    Ok(Json::Object(literal_map_to_values(map, "outputs")?.into_iter().map(|(k, v)| (k, v.to_json())).collect()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn declared_samples_look_through_unions() {
        let simple =
            |t: SimpleType| LiteralType { r#type: Some(literal_type::Type::Simple(t as i32)), ..Default::default() };
        let union = |variants| LiteralType {
            r#type: Some(literal_type::Type::UnionType(core::UnionType { variants })),
            ..Default::default()
        };
        assert_eq!(declared_samples(&simple(SimpleType::Integer)), vec![Value::Integer(0)]);
        let optional = union(vec![simple(SimpleType::None), simple(SimpleType::String), simple(SimpleType::Struct)]);
        assert_eq!(declared_samples(&optional), vec![Value::String(String::new())]);
        let nested = union(vec![union(vec![simple(SimpleType::Duration)]), simple(SimpleType::Boolean)]);
        assert_eq!(declared_samples(&nested), vec![Value::Duration(Duration::default()), Value::Boolean(false)]);
        assert!(declared_samples(&simple(SimpleType::None)).is_empty());
        assert!(declared_samples(&LiteralType::default()).is_empty());
    }

    fn round_trip(v: Value) {
        let lit = v.to_literal();
        assert_eq!(Value::from_literal(&lit, "x").unwrap(), v);
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(Value::None);
        round_trip(Value::Integer(-7));
        round_trip(Value::Float(2.5));
        round_trip(Value::String("héllo".into()));
        round_trip(Value::Boolean(true));
        round_trip(Value::Datetime(Timestamp { seconds: 1_700_000_000, nanos: 5 }));
        round_trip(Value::Duration(Duration { seconds: 90, nanos: 0 }));
        round_trip(Value::Binary { value: vec![0, 159, 255], tag: "msgpack".into() });
        round_trip(Value::Collection(vec![Value::Integer(1), Value::Collection(vec![Value::String("a".into())])]));
        round_trip(Value::Map(BTreeMap::from([("k".into(), Value::Float(1.0))])));
        round_trip(Value::StructuredDataset { uri: "bq://p:d.t".into(), format: "parquet".into() });
        round_trip(Value::Blob { uri: "s3://b/k".into(), format: "csv".into(), multipart: true });
        round_trip(Value::Generic(json!({"a": 1, "b": [true]}).as_object().unwrap().clone()));
    }

    #[test]
    fn typed_inputs_name_the_input_when_wrong() {
        let inputs = values_to_literal_map([("x", Value::Integer(3)), ("s", Value::String("a".into()))]);
        assert_eq!(get_input::<i64>(&inputs, "x").unwrap(), 3);
        assert_eq!(get_input::<Option<String>>(&inputs, "s").unwrap().as_deref(), Some("a"));
        let err = get_input::<bool>(&inputs, "x").unwrap_err();
        assert_eq!(err, AgentError::invalid_argument("inputs.x: expected boolean, got integer"));
        let err = get_input::<i64>(&inputs, "nope").unwrap_err();
        assert!(matches!(err, AgentError::InvalidArgument(m) if m.starts_with("inputs.nope: missing")));
    }

    #[test]
    fn unions_unwrap_and_empty_or_offloaded_literals_are_rejected() {
        let inner = Value::Integer(5).to_literal();
        let union = Literal {
            value: Some(literal::Value::Scalar(Box::new(Scalar {
                value: Some(scalar::Value::Union(Box::new(core::Union { value: Some(Box::new(inner)), r#type: None }))),
            }))),
            ..Default::default()
        };
        assert_eq!(Value::from_literal(&union, "u").unwrap(), Value::Integer(5));
        let err = Value::from_literal(&Literal::default(), "inputs.a").unwrap_err();
        assert_eq!(err, AgentError::invalid_argument("inputs.a: literal has no value"));
        let offloaded = Literal {
            value: Some(literal::Value::OffloadedMetadata(core::LiteralOffloadedMetadata {
                uri: "s3://x".into(),
                size_bytes: 10,
                inferred_type: None,
            })),
            ..Default::default()
        };
        assert!(Value::from_literal(&offloaded, "inputs.big").unwrap_err().message().contains("offloaded"));
    }

    #[test]
    fn json_display_is_readable() {
        let m = values_to_literal_map([
            ("t", Value::Datetime(Timestamp { seconds: 0, nanos: 0 })),
            ("d", Value::Duration(Duration { seconds: 1, nanos: 500_000_000 })),
        ]);
        assert_eq!(literal_map_to_json(&m).unwrap(), json!({"t": "1970-01-01T00:00:00Z", "d": "1.500s"}));
    }
}
