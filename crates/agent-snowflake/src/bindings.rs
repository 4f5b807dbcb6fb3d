//! flytekit users write pyformat placeholders (`%(name)s`), which the Python connector
//! fills in by string formatting. Here they become positional `?` bindings of the SQL API,
//! in order, with typed values: the query text never contains a value. A flyte-sdk batch
//! task's one `VALUES (…)` row is repeated for each element of its list inputs first, as
//! flyte-sdk expands it, and each element is bound like a scalar input.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{Map, Value as Json, json};

use agent_core::literals::{Value, declared_samples};
use agent_core::pb::core::{LiteralType, literal_type};
use agent_core::prelude::*;

/// The statement with `?` placeholders and its bindings (`{"1": {"type", "value"}, …}`).
/// Without inputs the SQL is sent as written, as flytekit sends it unformatted. A `batch`
/// task's rows are expanded first (see [`expand_batch`]).
pub(crate) fn translate(sql: &str, task: &TaskRequest, batch: bool) -> Result<(String, Map<String, Json>), AgentError> {
    if task.inputs.literals.is_empty() {
        return Ok((sql.to_owned(), Map::new()));
    }
    let values = task.input_values()?;
    let declared = task.template.interface.as_ref().and_then(|i| i.inputs.as_ref());
    let declared = |name: &str| declared.and_then(|d| d.variables.get(name)).and_then(|v| v.r#type.as_ref());
    if !batch {
        return bind(sql, &values.iter().map(|(k, v)| (k.clone(), (v.clone(), declared(k)))).collect());
    }
    let (sql, rows) = expand_batch(sql, &values)?;
    let element = |name: &str| match declared(name).and_then(|t| t.r#type.as_ref()) {
        Some(literal_type::Type::CollectionType(t)) => Some(&**t),
        _ => None,
    };
    bind(&sql, &rows.into_iter().map(|(k, (v, input))| (k, (v, element(&input)))).collect())
}

/// flyte-sdk's `VALUES (…)` clause: its row may hold one level of parentheses.
static VALUES: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"(?i)VALUES\s*\(((?:[^()]*|\([^)]*\))*)\)").expect("the VALUES pattern is valid")
});

/// Each renamed placeholder's element, with the name of the list input it comes from.
type Elements = BTreeMap<String, (Value, String)>;

/// A batch task's statement with its one `VALUES (…)` row written once per element of the
/// list inputs (all of one length), each placeholder `%(name)s` of row `i` renamed
/// `%(name_i)s`, and the element each renamed placeholder takes (with its input's name).
fn expand_batch(sql: &str, inputs: &BTreeMap<String, Value>) -> Result<(String, Elements), AgentError> {
    let bad = |why: String| AgentError::invalid_argument(why);
    let mut rows = None;
    for (name, value) in inputs {
        let Value::Collection(list) = value else {
            return Err(bad(format!("inputs.{name}: a batch task's inputs are lists, one element per row")));
        };
        if rows.is_some_and(|n| n != list.len()) {
            return Err(bad("inputs: all batch input lists must have the same length".into()));
        }
        rows = Some(list.len());
    }
    if rows.unwrap_or_default() == 0 {
        return Err(bad("inputs: batch inputs must hold at least one row".into()));
    }
    let mut clauses = VALUES.captures_iter(sql);
    let Some(clause) = clauses.next() else {
        return Err(bad("template.sql: a batch task's query needs a VALUES (...) clause to repeat per row".into()));
    };
    if clauses.next().is_some() {
        return Err(bad("template.sql: a batch task's query may have exactly one VALUES (...) clause".into()));
    }
    let (whole, row) = (clause.get(0).expect("a match has group 0"), &clause[1]);
    let mut elements = BTreeMap::new();
    let expanded: Vec<String> = (0..rows.unwrap_or_default())
        .map(|i| {
            let mut text = row.to_owned();
            for (name, value) in inputs {
                text = text.replace(&format!("%({name})s"), &format!("%({name}_{i})s"));
                if let Value::Collection(list) = value {
                    elements.insert(format!("{name}_{i}"), (list[i].clone(), name.clone()));
                }
            }
            format!("({text})")
        })
        .collect();
    let sql = format!("{}VALUES {}{}", &sql[..whole.start()], expanded.join(", "), &sql[whole.end()..]);
    Ok((sql, elements))
}

/// `sql` with its placeholders as positional bindings of the named values (each with its
/// declared type, which types a NULL).
fn bind(
    sql: &str,
    values: &BTreeMap<String, (Value, Option<&LiteralType>)>,
) -> Result<(String, Map<String, Json>), AgentError> {
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
        let Some((value, ty)) = values.get(name) else {
            return bad(format!("placeholder %({name})s has no input named '{name}'"));
        };
        let binding = binding(value, *ty).map_err(|why| {
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
        let (out, b) = translate(sql, &t, false).unwrap();
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

    /// flyte-sdk's expansion of a batch task's row (its rows, renamed placeholders and
    /// upper-case `VALUES`), bound instead of formatted into the text.
    #[test]
    fn a_batch_tasks_row_is_repeated_per_element_and_each_element_bound() {
        use agent_core::pb::core::{SimpleType, TypedInterface, Variable, VariableMap};
        let list = |v: Vec<Value>| Value::Collection(v);
        let mut t =
            task(vec![("a", list(vec![Value::Integer(1), Value::None])), ("b", list(vec!["x".into(), "it's".into()]))]);
        let int =
            LiteralType { r#type: Some(literal_type::Type::Simple(SimpleType::Integer as i32)), ..Default::default() };
        let ints =
            LiteralType { r#type: Some(literal_type::Type::CollectionType(Box::new(int))), ..Default::default() };
        let variables = [("a".to_owned(), Variable { r#type: Some(ints), ..Default::default() })].into();
        t.template.interface = Some(TypedInterface { inputs: Some(VariableMap { variables }), outputs: None });
        // One level of parentheses inside the row, as flyte-sdk's pattern allows.
        let sql = "insert into t (a, b, at) values (%(a)s, %(b)s, now()) returning a";
        let (out, b) = translate(sql, &t, true).unwrap();
        assert_eq!(out, "insert into t (a, b, at) VALUES (?, ?, now()), (?, ?, now()) returning a");
        let pairs: Vec<_> =
            (1..=4).map(|i| (b[&i.to_string()]["type"].clone(), b[&i.to_string()]["value"].clone())).collect();
        assert_eq!(
            pairs,
            [
                (json!("FIXED"), json!("1")),
                (json!("TEXT"), json!("x")),
                (json!("FIXED"), Json::Null),
                (json!("TEXT"), json!("it's")),
            ],
            "a NULL element takes the list's declared element type"
        );
        for (inputs, sql, why) in [
            (vec![("a", list(vec![Value::Integer(1)])), ("b", list(vec![]))], sql, "same length"),
            (vec![("a", list(vec![])), ("b", list(vec![]))], sql, "at least one row"),
            (vec![("a", Value::Integer(1))], sql, "inputs.a: a batch task's inputs are lists"),
            (vec![("a", list(vec![Value::Integer(1)]))], "insert into t select %(a)s", "needs a VALUES"),
            (vec![("a", list(vec![Value::Integer(1)]))], "insert into t values (%(a)s) values (1)", "exactly one"),
        ] {
            let e = translate(sql, &task(inputs), true).unwrap_err();
            assert!(matches!(&e, AgentError::InvalidArgument(m) if m.contains(why)), "{why}: {e:?}");
        }
    }

    #[test]
    fn bad_placeholders_and_unbindable_inputs_are_named() {
        let t = task(vec![("x", Value::Integer(1)), ("m", Value::Map(Default::default()))]);
        let err = translate("select %(y)s", &t, false).unwrap_err();
        assert!(err.message().contains("%(y)s has no input named 'y'"), "{err}");
        assert!(translate("select %(m)s", &t, false).unwrap_err().message().starts_with("inputs.m: "));
        assert!(translate("select 50% off", &t, false).unwrap_err().message().contains("%%"));
        assert!(translate("select %(x", &t, false).unwrap_err().message().contains("unterminated"));
        // Without inputs, the SQL goes as written.
        assert_eq!(translate("select 50% off", &task(vec![]), false).unwrap().0, "select 50% off");
    }
}
