//! What tasks and metas bring in, made safe for BigQuery before any request is built.
//!
//! Ids: a template's `ProjectID`/`Location`/`Domain` (and flytekit version) and a resource
//! meta's `job_id`/`project`/`location` come from outside, and an id with `/`, `%2F` or a
//! line break would reach another endpoint or another header. The rules are BigQuery's
//! own; values are never echoed, since they may hold control characters.
//!
//! Inputs become BigQuery named query parameters (`@name` in the SQL), in the REST shape
//! `{"name", "parameterType": {...}, "parameterValue": {...}}`.

use base64::Engine;
use serde_json::{Value as Json, json};

use agent_core::literals::{Value, declared_samples};
use agent_core::pb::core::{LiteralType, literal_type};
use agent_core::prelude::*;

/// What a rule allows, for messages.
const JOB_ID_RULE: &str = "letters, digits, '_' and '-', at most 1024 characters";
const PROJECT_RULE: &str =
    "lowercase letters, digits and '-', optionally after a legacy 'domain:' prefix, at most 128 characters";
const LOCATION_RULE: &str = "letters, digits and '-', at most 64 characters";
const HEADER_RULE: &str = "printable ASCII without control characters, at most 256 characters";

/// Whether `s` has 1 to `max` bytes, each of them `allowed`.
fn fits(s: &str, max: usize, allowed: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(allowed)
}

/// BigQuery job ids: letters, digits, `_`, `-`; at most 1024.
fn is_job_id(id: &str) -> bool {
    fits(id, 1024, |b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Google Cloud project ids (lowercase letters, digits, `-`), with the legacy
/// domain-scoped form `example.com:project`.
fn is_project(id: &str) -> bool {
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let (domain, project) = id.rsplit_once(':').map_or((None, id), |(d, p)| (Some(d), p));
    id.len() <= 128 && fits(project, 128, plain) && domain.is_none_or(|d| fits(d, 128, |b| plain(b) || b == b'.'))
}

/// BigQuery locations: `US`, `EU`, `us-central1`, …
fn is_location(l: &str) -> bool {
    fits(l, 64, |b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Flyte's domain, sent in the user agent as flytekit does: it must fit in a header.
fn is_header_text(s: &str) -> bool {
    s.len() <= 256 && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

fn check(ok: bool, source: &str, rule: &str) -> Result<(), AgentError> {
    if ok { Ok(()) } else { Err(AgentError::invalid_argument(format!("{source} must be {rule}"))) }
}

/// A task's `ProjectID`, `Location` (absent or empty: none), and what goes into the user
/// agent: `Domain` and `sdk`, the flytekit version of `template.metadata.runtime`.
pub(crate) fn check_task(project: &str, loc: Option<&str>, domain: Option<&str>, sdk: &str) -> Result<(), AgentError> {
    check(is_project(project), "template.custom.ProjectID", &format!("a BigQuery project id: {PROJECT_RULE}"))?;
    let location_ok = loc.is_none_or(|l| l.is_empty() || is_location(l));
    check(location_ok, "template.custom.Location", &format!("a BigQuery location: {LOCATION_RULE}"))?;
    check(domain.is_none_or(is_header_text), "template.custom.Domain", HEADER_RULE)?;
    check(is_header_text(sdk), "template.metadata.runtime.version", HEADER_RULE)
}

/// A meta's `job_id`, `project` and `location` (absent or empty: none).
pub(crate) fn check_meta(job_id: &str, project: &str, location: Option<&str>) -> Result<(), AgentError> {
    let not_ours = "; the meta was not written by a BigQuery agent";
    check(is_job_id(job_id), "resource meta: job_id", &format!("a BigQuery job id ({JOB_ID_RULE}){not_ours}"))?;
    check(is_project(project), "resource meta: project", &format!("a BigQuery project id ({PROJECT_RULE}){not_ours}"))?;
    let location_ok = location.is_none_or(|l| l.is_empty() || is_location(l));
    check(location_ok, "resource meta: location", &format!("a BigQuery location ({LOCATION_RULE}){not_ours}"))
}

/// Every input as a named parameter, sorted by name. A value that cannot be a parameter is
/// `INVALID_ARGUMENT` naming the input.
/// How datetime inputs are sent: flytekit's connector sends a `TIMESTAMP`; flyte-sdk's
/// (Flyte 2) a `DATETIME` holding the UTC wall time, which BigQuery does not convert to a
/// timestamp implicitly, so a query written for one fails with the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Datetimes {
    Timestamp,
    Datetime,
}

pub(crate) fn query_parameters(task: &TaskRequest, dt: Datetimes) -> Result<Vec<Json>, AgentError> {
    let declared = task.template.interface.as_ref().and_then(|i| i.inputs.as_ref());
    let scalars_only = "BigQuery query parameters are scalars or arrays of scalars";
    (task.input_values()?.into_iter())
        .map(|(name, value)| {
            let ty = declared.and_then(|d| d.variables.get(&name)).and_then(|v| v.r#type.as_ref());
            let (t, v) = parameter(&value, ty, dt)
                .map_err(|why| AgentError::invalid_argument(format!("inputs.{name}: {why}; {scalars_only}")))?;
            Ok(json!({"name": name, "parameterType": t, "parameterValue": v}))
        })
        .collect()
}

/// `(parameterType, parameterValue)` for one value.
fn parameter(value: &Value, declared: Option<&LiteralType>, dt: Datetimes) -> Result<(Json, Json), String> {
    match value {
        Value::Collection(items) => {
            let scalars = items
                .iter()
                .map(|v| scalar(v, dt))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("list element: {e}"))?;
            let declared_element = || match declared?.r#type.as_ref()? {
                literal_type::Type::CollectionType(inner) => declared_scalar_type(inner, dt),
                _ => None,
            };
            let element_type = scalars.first().map(|(t, _)| *t).or_else(declared_element);
            let element_type = element_type.ok_or("an empty list of unknown element type")?;
            if let Some((t, _)) = scalars.iter().find(|(t, _)| *t != element_type) {
                return Err(format!("a list mixing {element_type} and {t}"));
            }
            let values: Vec<_> = scalars.into_iter().map(|(_, v)| json!({"value": v})).collect();
            Ok((json!({"type": "ARRAY", "arrayType": {"type": element_type}}), json!({"arrayValues": values})))
        }
        // NULL of the declared type: BigQuery needs a type even for NULL.
        Value::None => {
            let ty = declared
                .and_then(|d| declared_scalar_type(d, dt))
                .ok_or("a None whose type the task does not declare")?;
            Ok((json!({"type": ty}), json!({})))
        }
        other => {
            let (t, v) = scalar(other, dt)?;
            Ok((json!({"type": t}), json!({"value": v})))
        }
    }
}

/// BigQuery type name and string value of a scalar.
fn scalar(value: &Value, dt: Datetimes) -> Result<(&'static str, String), String> {
    Ok(match value {
        Value::Integer(i) => ("INT64", i.to_string()),
        Value::Float(f) => ("FLOAT64", float(*f)),
        // Strings stay strings, even when they look like dates: the SQL decides.
        Value::String(s) => ("STRING", s.clone()),
        Value::Boolean(b) => ("BOOL", b.to_string()),
        Value::Datetime(t) if dt == Datetimes::Timestamp => ("TIMESTAMP", t.to_string()),
        Value::Datetime(t) => ("DATETIME", wall_time(t)),
        Value::Duration(d) => ("INTERVAL", interval(d.seconds, d.nanos)),
        Value::Binary { value, .. } => ("BYTES", base64::engine::general_purpose::STANDARD.encode(value)),
        Value::None => return Err("None; BigQuery arrays cannot hold NULL".into()),
        Value::Collection(_) => return Err("a nested list; BigQuery has no arrays of arrays".into()),
        other => return Err(format!("a {} value", other.kind())),
    })
}

/// BigQuery's float text: Rust's shortest round-tripping form, and `NaN`, `Infinity`, `-Infinity`.
fn float(f: f64) -> String {
    if f.is_infinite() { format!("{}Infinity", if f < 0.0 { "-" } else { "" }) } else { format!("{f:?}") }
}

/// BigQuery's canonical INTERVAL text, `Y-M D H:M:S[.F]`, with everything in the time part.
fn interval(seconds: i64, nanos: i32) -> String {
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    let sign = if total < 0 { "-" } else { "" };
    // BigQuery keeps microseconds; finer digits are dropped.
    let (secs, micros) = (total.unsigned_abs() / 1_000_000_000, total.unsigned_abs() % 1_000_000_000 / 1000);
    let fraction = if micros == 0 { String::new() } else { format!(".{micros:06}").trim_end_matches('0').to_owned() };
    format!("0-0 0 {sign}{}:{}:{}{fraction}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The BigQuery scalar type of a declared Flyte type (looking through `Optional`).
fn declared_scalar_type(t: &LiteralType, dt: Datetimes) -> Option<&'static str> {
    declared_samples(t).iter().find_map(|v| Some(scalar(v, dt).ok()?.0))
}

/// A UTC instant as BigQuery's DATETIME text with microseconds, as Google's Python client
/// writes a naive datetime: `2024-01-02T03:04:05.000000`.
fn wall_time(t: &agent_core::prost_types::Timestamp) -> String {
    let text = t.to_string();
    let text = text.trim_end_matches('Z');
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    format!("{whole}.{:0<6}", &fraction[..fraction.len().min(6)])
}

#[cfg(test)]
mod tests {
    use agent_core::literals::values_to_literal_map;
    use agent_core::pb::core::{TaskTemplate, TypedInterface, UnionType, Variable, VariableMap};
    use agent_core::prost_types::{Duration, Timestamp};

    use agent_core::pb::core::SimpleType;

    use super::*;

    fn simple(t: SimpleType) -> LiteralType {
        LiteralType { r#type: Some(literal_type::Type::Simple(t as i32)), ..Default::default() }
    }

    fn task(inputs: Vec<(&str, Value)>, declared: Vec<(&str, LiteralType)>) -> TaskRequest {
        let variables = declared
            .into_iter()
            .map(|(k, t)| (k.to_owned(), Variable { r#type: Some(t), ..Default::default() }))
            .collect();
        TaskRequest {
            template: TaskTemplate {
                interface: Some(TypedInterface { inputs: Some(VariableMap { variables }), outputs: None }),
                ..Default::default()
            },
            inputs: values_to_literal_map(inputs),
            ..Default::default()
        }
    }

    #[test]
    fn every_scalar_type_maps_to_its_bigquery_type() {
        let t = task(
            vec![
                ("b", Value::Boolean(true)),
                ("bytes", Value::Binary { value: vec![0xff, 0], tag: String::new() }),
                ("d", Value::Duration(Duration { seconds: 90_061, nanos: 500_000_000 })),
                ("f", Value::Float(0.1)),
                ("i", Value::Integer(-7)),
                ("s", Value::String("2024-01-01".into())),
                ("t", Value::Datetime(Timestamp { seconds: 1_700_000_000, nanos: 0 })),
            ],
            vec![],
        );
        let got: Vec<(String, String, String)> = query_parameters(&t, Datetimes::Timestamp)
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_owned(),
                    p["parameterType"]["type"].as_str().unwrap().to_owned(),
                    p["parameterValue"]["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let want = [
            ("b", "BOOL", "true"),
            ("bytes", "BYTES", "/wA="),
            ("d", "INTERVAL", "0-0 0 25:1:1.5"),
            ("f", "FLOAT64", "0.1"),
            ("i", "INT64", "-7"),
            ("s", "STRING", "2024-01-01"),
            ("t", "TIMESTAMP", "2023-11-14T22:13:20Z"),
        ];
        let want: Vec<_> = want.iter().map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned())).collect();
        assert_eq!(got, want);
    }

    /// flyte-sdk (Flyte 2) sends datetimes as DATETIME: the UTC wall time with microseconds.
    #[test]
    fn flyte2_datetimes_are_datetime_wall_times() {
        let at = |seconds, nanos| Value::Datetime(Timestamp { seconds, nanos });
        let t = task(vec![("t", at(1_700_000_000, 0)), ("u", at(1_700_000_000, 123_456_789))], vec![]);
        let ps = query_parameters(&t, Datetimes::Datetime).unwrap();
        let got: Vec<_> =
            ps.iter().map(|p| (p["parameterType"]["type"].clone(), p["parameterValue"]["value"].clone())).collect();
        assert_eq!(
            got,
            [
                (json!("DATETIME"), json!("2023-11-14T22:13:20.000000")),
                (json!("DATETIME"), json!("2023-11-14T22:13:20.123456")),
            ]
        );
        let ps = query_parameters(&t, Datetimes::Timestamp).unwrap();
        assert_eq!(ps[0]["parameterType"]["type"], "TIMESTAMP", "flytekit's stay timestamps");
    }

    #[test]
    fn lists_become_arrays_and_nulls_take_the_declared_type() {
        let list = LiteralType {
            r#type: Some(literal_type::Type::CollectionType(Box::new(simple(SimpleType::Integer)))),
            ..Default::default()
        };
        let optional = LiteralType {
            r#type: Some(literal_type::Type::UnionType(UnionType {
                variants: vec![simple(SimpleType::None), simple(SimpleType::String)],
            })),
            ..Default::default()
        };
        let t = task(
            vec![("ids", vec![1_i64, 2].into()), ("none", Value::None), ("empty", Value::Collection(vec![]))],
            vec![("empty", list.clone()), ("none", optional)],
        );
        let ps = query_parameters(&t, Datetimes::Timestamp).unwrap();
        let by_name = |n: &str| ps.iter().find(|p| p["name"] == n).unwrap().clone();
        assert_eq!(
            by_name("ids"),
            json!({"name": "ids", "parameterType": {"type": "ARRAY", "arrayType": {"type": "INT64"}},
                   "parameterValue": {"arrayValues": [{"value": "1"}, {"value": "2"}]}})
        );
        assert_eq!(by_name("empty")["parameterType"]["arrayType"]["type"], "INT64");
        assert_eq!(by_name("none"), json!({"name": "none", "parameterType": {"type": "STRING"}, "parameterValue": {}}));
    }

    #[test]
    fn values_that_cannot_be_parameters_name_the_input() {
        for (v, why) in [
            (Value::Map(Default::default()), "a map value"),
            (Value::StructuredDataset { uri: "bq://p:d.t".into(), format: String::new() }, "structured dataset"),
            (Value::Collection(vec![Value::Collection(vec![])]), "nested list"),
            (Value::Collection(vec![Value::Integer(1), Value::String("a".into())]), "mixing INT64 and STRING"),
            (Value::None, "None whose type the task does not declare"),
        ] {
            let err = query_parameters(&task(vec![("x", v)], vec![]), Datetimes::Timestamp).unwrap_err();
            assert!(
                matches!(&err, AgentError::InvalidArgument(m) if m.starts_with("inputs.x: ") && m.contains(why)),
                "{err}"
            );
        }
    }

    #[test]
    fn intervals_and_floats_are_canonical() {
        assert_eq!(interval(0, 0), "0-0 0 0:0:0");
        assert_eq!(interval(-90, 0), "0-0 0 -0:1:30");
        assert_eq!(interval(0, 1_000), "0-0 0 0:0:0.000001");
        // Below a microsecond: no fraction, where a bare "0:0:0." used to be sent.
        assert_eq!(interval(0, 999), "0-0 0 0:0:0");
        assert_eq!(interval(-1, -500_000_000), "0-0 0 -0:0:1.5");
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::NEG_INFINITY), "-Infinity");
        assert_eq!((float(f64::INFINITY), float(-0.5)), ("Infinity".to_owned(), "-0.5".to_owned()));
    }

    #[test]
    fn ids_follow_bigquerys_rules() {
        for ok in ["flyte_0123abcd", "bquxjob_1a2b", "A-b_9", &"j".repeat(1024)] {
            assert!(is_job_id(ok), "{ok}");
        }
        for bad in ["", "a/b", "j%2F..%2F..", "..", "a.b", "a b", "a\nb", "é", &"j".repeat(1025)] {
            assert!(!is_job_id(bad), "{bad:?}");
        }
        for ok in ["flyte-test", "my-project-123", "google.com:my-project", "example.co.uk:p1"] {
            assert!(is_project(ok), "{ok}");
        }
        for bad in ["", "Flyte", "a_b", "a/b", "a%2Fb", ":p", "d:", "a:b:c", "p\r\n", &"p".repeat(129)] {
            assert!(!is_project(bad), "{bad:?}");
        }
        for ok in ["US", "EU", "us-central1", "asia-northeast1"] {
            assert!(is_location(ok), "{ok}");
        }
        for bad in ["", "us/central1", "US\n", "us central", "us_central1"] {
            assert!(!is_location(bad), "{bad:?}");
        }
        for ok in ["", "development", "dev team"] {
            assert!(is_header_text(ok), "{ok}");
        }
        for bad in ["dev\r\nX-Injected: 1", "dev\0", "dev\x7f", "dév"] {
            assert!(!is_header_text(bad), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_the_key_and_never_echo_the_value() {
        let e = check_task("p\r\nX-Evil: 1", None, None, "").unwrap_err();
        assert!(
            matches!(&e, AgentError::InvalidArgument(m) if m.contains("template.custom.ProjectID") && !m.contains("Evil"))
        );
        let e = check_task("p", Some("US"), Some("dev\nX-Evil: 1"), "1.16.31").unwrap_err();
        assert!(
            matches!(&e, AgentError::InvalidArgument(m) if m.contains("template.custom.Domain") && !m.contains("Evil"))
        );
        let e = check_meta("a/../b", "p", None).unwrap_err();
        assert!(matches!(&e, AgentError::InvalidArgument(m) if m.contains("job_id") && !m.contains("a/../b")));
        let e = check_task("p", None, None, "1.0\r\nX-Evil: 1").unwrap_err();
        assert!(matches!(&e, AgentError::InvalidArgument(m) if m.contains("runtime.version") && !m.contains("Evil")));
        assert!(check_meta("j", "p", Some("")).is_ok() && check_task("p", Some(""), None, "").is_ok());
    }
}
