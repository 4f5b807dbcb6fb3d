//! flytekit users write pyformat placeholders (`%(name)s`), which the Python connector
//! fills in by string formatting. Here they become positional `?` bindings of the SQL API,
//! in order, with typed values: the query text never contains a value.

use serde_json::{Map, Value as Json, json};

use agent_core::literals::{Value, declared_samples};
use agent_core::pb::core::LiteralType;
use agent_core::prelude::*;

/// The statement with `?` placeholders and its bindings (`{"1": {"type", "value"}, …}`).
/// Without inputs the SQL is sent as written, as flytekit sends it unformatted.
pub(crate) fn translate(sql: &str, task: &TaskRequest) -> Result<(String, Map<String, Json>), AgentError> {
    if task.inputs.literals.is_empty() {
        return Ok((sql.to_owned(), Map::new()));
    }
    let values = task.input_values()?;
    let declared = task.template.interface.as_ref().and_then(|i| i.inputs.as_ref());
    let (mut out, mut bindings, mut rest) = (String::with_capacity(sql.len()), Map::new(), sql);
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let near: String = tail.chars().take(20).collect();
        let bad = |why: String| Err(AgentError::invalid_argument(format!("template.sql: {why}")));
        let Some(named) = tail.strip_prefix("%(") else {
            let Some(after) = tail.strip_prefix("%%") else {
                return bad(format!("a '%' at '{near}' is not a placeholder; write %% for a literal percent sign"));
            };
            out.push('%');
            rest = after;
            continue;
        };
        let Some((name, after)) = named.split_once(")s") else {
            return bad(format!("unterminated placeholder near '{near}'; write %(name)s"));
        };
        let Some(value) = values.get(name) else {
            return bad(format!("placeholder %({name})s has no input named '{name}'"));
        };
        let ty = declared.and_then(|d| d.variables.get(name)).and_then(|v| v.r#type.as_ref());
        let binding = binding(value, ty).map_err(|why| {
            AgentError::invalid_argument(format!("inputs.{name}: {why}; Snowflake binds scalars only"))
        })?;
        bindings.insert((bindings.len() + 1).to_string(), binding);
        out.push('?');
        rest = after;
    }
    out.push_str(rest);
    Ok((out, bindings))
}

fn binding(value: &Value, declared: Option<&LiteralType>) -> Result<Json, String> {
    let (ty, v) = match value {
        // NULL of the declared type (looking through `Optional`), else TEXT.
        Value::None => {
            let samples = declared.map(declared_samples).unwrap_or_default();
            (samples.iter().find_map(|s| typed(s).ok()).map_or("TEXT", |(ty, _)| ty), Json::Null)
        }
        other => typed(other)?,
    };
    Ok(json!({"type": ty, "value": v}))
}

/// Snowflake's type and text of a value.
fn typed(value: &Value) -> Result<(&'static str, Json), String> {
    Ok(match value {
        Value::Integer(i) => ("FIXED", json!(i.to_string())),
        Value::Float(f) => ("REAL", json!(f.to_string())),
        Value::String(s) => ("TEXT", json!(s)),
        Value::Boolean(b) => ("BOOLEAN", json!(b.to_string())),
        // Nanoseconds since the epoch, as Snowflake's connectors bind timestamps.
        Value::Datetime(t) => {
            let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
            ("TIMESTAMP_LTZ", json!(nanos.to_string()))
        }
        Value::Binary { value, .. } => ("BINARY", json!(value.iter().map(|b| format!("{b:02X}")).collect::<String>())),
        other => return Err(format!("a {} value cannot be bound", other.kind())),
    })
}

#[cfg(test)]
mod tests {
    use agent_core::literals::values_to_literal_map;
    use agent_core::prost_types::Timestamp;

    use super::*;

    fn task(inputs: Vec<(&str, Value)>) -> TaskRequest {
        TaskRequest { inputs: values_to_literal_map(inputs), ..Default::default() }
    }

    #[test]
    fn a_none_is_bound_as_its_declared_type_else_text() {
        use agent_core::pb::core::{SimpleType, literal_type};
        let int =
            LiteralType { r#type: Some(literal_type::Type::Simple(SimpleType::Integer as i32)), ..Default::default() };
        let duration =
            LiteralType { r#type: Some(literal_type::Type::Simple(SimpleType::Duration as i32)), ..Default::default() };
        assert_eq!(binding(&Value::None, Some(&int)).unwrap(), json!({"type": "FIXED", "value": null}));
        assert_eq!(binding(&Value::None, Some(&duration)).unwrap(), json!({"type": "TEXT", "value": null}));
        assert_eq!(binding(&Value::None, None).unwrap(), json!({"type": "TEXT", "value": null}));
    }

    #[test]
    fn placeholders_become_ordered_typed_bindings() {
        let t = task(vec![
            ("id", Value::Integer(7)),
            ("name", "O'Brien; DROP TABLE x".into()),
            ("ok", Value::Boolean(true)),
            ("at", Value::Datetime(Timestamp { seconds: 1, nanos: 5 })),
            ("ratio", Value::Float(0.25)),
            ("raw", Value::Binary { value: vec![0xab, 0x01], tag: String::new() }),
        ]);
        let sql = "select * from t where id = %(id)s and name = %(name)s and ok = %(ok)s and at > %(at)s \
                   and r = %(ratio)s and b = %(raw)s and pct like '10%%' and again = %(id)s";
        let (out, b) = translate(sql, &t).unwrap();
        assert_eq!(
            out,
            "select * from t where id = ? and name = ? and ok = ? and at > ? and r = ? and b = ? and pct like '10%' and again = ?"
        );
        assert!(!out.contains("O'Brien"), "values never enter the text");
        let types: Vec<&str> = (1..=7).map(|i| b[&i.to_string()]["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["FIXED", "TEXT", "BOOLEAN", "TIMESTAMP_LTZ", "REAL", "BINARY", "FIXED"]);
        assert_eq!(b["4"]["value"], "1000000005");
        assert_eq!(b["6"]["value"], "AB01");
    }

    #[test]
    fn bad_placeholders_and_unbindable_inputs_are_named() {
        let t = task(vec![("x", Value::Integer(1)), ("m", Value::Map(Default::default()))]);
        let err = translate("select %(y)s", &t).unwrap_err();
        assert!(err.message().contains("%(y)s has no input named 'y'"), "{err}");
        assert!(translate("select %(m)s", &t).unwrap_err().message().starts_with("inputs.m: "));
        assert!(translate("select 50% off", &t).unwrap_err().message().contains("%%"));
        assert!(translate("select %(x", &t).unwrap_err().message().contains("unterminated"));
        // Without inputs, the SQL goes as written.
        assert_eq!(translate("select 50% off", &task(vec![])).unwrap().0, "select 50% off");
    }
}
