//! flytekit's templating of a webhook's settings: every string of `template.custom` may hold
//! `{inputs.name}` placeholders (`{inputs.name.key}` reaches into a map). A string that is
//! exactly one placeholder becomes the input's value itself (a number stays a number in a
//! JSON body); elsewhere the value is written as Python's `str()` writes it, since that is
//! what the Python connector sends. `{secrets.NAME}` (ours, in headers only) is a secret
//! the request's Flyte 2 connection carries.
//!
//! Inputs are first turned into the plain values flytekit's connector sees: files and
//! tables as their URI, datetimes in ISO form, durations in seconds, msgpack-encoded
//! values as JSON text.

use agent_core::literals::Value;
use agent_core::prelude::AgentError;
use serde_json::{Map, Number, Value as Json};

/// What placeholders are filled from.
pub(crate) struct Scope<'a> {
    /// The task's inputs as plain values (see [`native`]).
    pub(crate) inputs: &'a Map<String, Json>,
    /// A secret of the request's connection by name, or why there is none.
    pub(crate) secret: &'a dyn Fn(&str) -> Result<String, AgentError>,
}

/// `value` with its placeholders filled; `path` names it in errors (`template.custom.url`).
/// `secrets_allowed`: whether `{secrets.…}` may appear (headers only). Returns whether a
/// secret was filled in.
pub(crate) fn fill(
    value: &Json,
    scope: &Scope<'_>,
    path: &str,
    secrets_allowed: bool,
) -> Result<(Json, bool), AgentError> {
    let mut used_secret = false;
    let filled = fill_value(value, scope, path, secrets_allowed, &mut used_secret)?;
    Ok((filled, used_secret))
}

fn fill_value(
    value: &Json,
    scope: &Scope<'_>,
    path: &str,
    secrets_allowed: bool,
    used_secret: &mut bool,
) -> Result<Json, AgentError> {
    Ok(match value {
        Json::String(s) => fill_string(s, scope, path, secrets_allowed, used_secret)?,
        Json::Array(items) => Json::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| fill_value(v, scope, &format!("{path}[{i}]"), secrets_allowed, used_secret))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| {
                    Ok((k.clone(), fill_value(v, scope, &format!("{path}.{k}"), secrets_allowed, used_secret)?))
                })
                .collect::<Result<_, AgentError>>()?,
        ),
        other => other.clone(),
    })
}

/// The placeholders of `s` as flytekit finds them: from each `{`, everything up to the
/// next `}` (at least one character).
fn placeholders(s: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(0) => rest = &after[1..],
            Some(close) => {
                found.push(&after[..close]);
                rest = &after[close + 1..];
            }
            None => break,
        }
    }
    found
}

fn fill_string(
    s: &str,
    scope: &Scope<'_>,
    path: &str,
    secrets_allowed: bool,
    used_secret: &mut bool,
) -> Result<Json, AgentError> {
    let mut current = s.to_owned();
    for name in placeholders(s) {
        // flytekit fills dotted names only; `{other}` stays as written.
        let Some((root, rest)) = name.split_once('.') else { continue };
        let value = match root {
            "inputs" => lookup(scope.inputs, rest, name, path)?,
            "secrets" if secrets_allowed => {
                *used_secret = true;
                Json::String((scope.secret)(rest)?)
            }
            "secrets" => {
                return Err(AgentError::invalid_argument(format!(
                    "{path}: {{{name}}}: secrets may be used in headers only, where they are never shown"
                )));
            }
            _ => {
                return Err(AgentError::invalid_argument(format!(
                    "{path}: {{{name}}}: placeholders name inputs ({{inputs.NAME}}) or, in headers, secrets \
                     ({{secrets.NAME}})"
                )));
            }
        };
        let placeholder = format!("{{{name}}}");
        if current == placeholder {
            return Ok(value);
        }
        current = current.replace(&placeholder, &py_str(&value));
    }
    Ok(Json::String(current))
}

/// The value at `keys` (dot-separated) in the inputs.
fn lookup(inputs: &Map<String, Json>, keys: &str, name: &str, path: &str) -> Result<Json, AgentError> {
    let mut parts = keys.split('.');
    let first = parts.next().unwrap_or_default();
    let Some(mut at) = inputs.get(first) else {
        let names: Vec<&str> = inputs.keys().map(String::as_str).collect();
        let names = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
        return Err(AgentError::invalid_argument(format!(
            "{path}: {{{name}}} names no input '{first}'; the task's inputs: {names}"
        )));
    };
    let mut walked = format!("inputs.{first}");
    for key in parts {
        at = match at {
            Json::Object(map) => map.get(key).ok_or_else(|| {
                AgentError::invalid_argument(format!("{path}: {{{name}}}: {walked} has no key '{key}'"))
            })?,
            other => {
                return Err(AgentError::invalid_argument(format!(
                    "{path}: {{{name}}}: {walked} is a {}, not a map with key '{key}'",
                    kind(other)
                )));
            }
        };
        walked = format!("{walked}.{key}");
    }
    Ok(at.clone())
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "none",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "list",
        Json::Object(_) => "map",
    }
}

/// An input as the plain value flytekit's connector fills placeholders with.
pub(crate) fn native(v: &Value) -> Json {
    match v {
        Value::None => Json::Null,
        Value::Integer(i) => Json::from(*i),
        Value::Float(f) => float(*f),
        Value::String(s) => Json::String(s.clone()),
        Value::Boolean(b) => Json::Bool(*b),
        Value::Datetime(t) => Json::String(isoformat(t.seconds, t.nanos)),
        Value::Duration(d) => float(d.seconds as f64 + f64::from(d.nanos) / 1e9),
        Value::Binary { value, tag } if tag == "msgpack" => match rmp_serde::from_slice::<Json>(value) {
            Ok(decoded) => Json::String(py_json_dumps(&decoded)),
            Err(_) => Json::String(py_bytes(value)),
        },
        Value::Binary { value, .. } => Json::String(py_bytes(value)),
        Value::Collection(items) => Json::Array(items.iter().map(native).collect()),
        Value::Map(map) => Json::Object(map.iter().map(|(k, v)| (k.clone(), native(v))).collect()),
        Value::StructuredDataset { uri, .. } | Value::Blob { uri, .. } => Json::String(uri.clone()),
        // A protobuf Struct's numbers are doubles, and Python keeps them floats.
        Value::Generic(map) => Json::Object(map.iter().map(|(k, v)| (k.clone(), doubles(v))).collect()),
    }
}

fn float(f: f64) -> Json {
    Number::from_f64(f).map_or(Json::Null, Json::Number)
}

fn doubles(v: &Json) -> Json {
    match v {
        Json::Number(n) => n.as_f64().map_or(Json::Null, float),
        Json::Array(items) => Json::Array(items.iter().map(doubles).collect()),
        Json::Object(map) => Json::Object(map.iter().map(|(k, v)| (k.clone(), doubles(v))).collect()),
        other => other.clone(),
    }
}

/// Python's `datetime.isoformat()` of a UTC instant: microseconds only when not zero.
/// Any instant a Timestamp holds is written, before 1970 included (civil date from days,
/// after Howard Hinnant's algorithm), so no input can make the agent panic.
fn isoformat(seconds: i64, nanos: i32) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, sec) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let micros = nanos.clamp(0, 999_999_999) / 1000;
    let fraction = if micros == 0 { String::new() } else { format!(".{micros:06}") };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}{fraction}+00:00")
}

/// Python's `str()` of a plain value.
pub(crate) fn py_str(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python's `repr()` of a plain value (how `str()` writes what a list or dict holds).
fn py_repr(v: &Json) -> String {
    match v {
        Json::Null => "None".to_owned(),
        Json::Bool(true) => "True".to_owned(),
        Json::Bool(false) => "False".to_owned(),
        Json::Number(n) => py_number(n),
        Json::String(s) => py_quote(s),
        Json::Array(items) => format!("[{}]", items.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Json::Object(map) => format!(
            "{{{}}}",
            map.iter().map(|(k, v)| format!("{}: {}", py_quote(k), py_repr(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn py_number(n: &Number) -> String {
    match n.as_i64().map(|i| i.to_string()).or_else(|| n.as_u64().map(|u| u.to_string())) {
        Some(int) if !n.is_f64() => int,
        _ => py_float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// Python's `repr()` of a float: the shortest digits that read back the same, in fixed
/// notation for exponents from -4 to 15, else as `1.5e+16`.
pub(crate) fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        let body = if exp >= 0 {
            let point = usize::try_from(exp).unwrap_or(0) + 1;
            let padded = format!("{digits:0<point$}");
            let (int, frac) = padded.split_at(point);
            format!("{int}.{}", if frac.is_empty() { "0" } else { frac })
        } else {
            format!("0.{}{digits}", "0".repeat(usize::try_from(-exp - 1).unwrap_or(0)))
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        format!("{sign}{first}{frac}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
    }
}

/// Python's `repr()` of a string: single quotes unless only double quotes avoid escaping.
fn py_quote(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str()` of the bytes flytekit makes of a binary it cannot decode (base64).
fn py_bytes(value: &[u8]) -> String {
    use base64::Engine as _;
    format!("b'{}'", base64::engine::general_purpose::STANDARD.encode(value))
}

/// Python's `json.dumps()` with its defaults: `", "` and `": "` separators, non-ASCII
/// escaped, floats as `repr()` writes them.
fn py_json_dumps(v: &Json) -> String {
    match v {
        Json::Null => "null".to_owned(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) => py_number(n),
        Json::String(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
                    c => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{u:04x}"));
                        }
                    }
                }
            }
            out.push('"');
            out
        }
        Json::Array(items) => format!("[{}]", items.iter().map(py_json_dumps).collect::<Vec<_>>().join(", ")),
        Json::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", py_json_dumps(&Json::String(k.clone())), py_json_dumps(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope_fill(v: Json, inputs: Json) -> Result<Json, AgentError> {
        let inputs = inputs.as_object().unwrap().clone();
        let secret = |name: &str| -> Result<String, AgentError> {
            if name == "TOKEN" { Ok("s3cr3t".into()) } else { Err(AgentError::failed_precondition("no such secret")) }
        };
        let scope = Scope { inputs: &inputs, secret: &secret };
        fill(&v, &scope, "template.custom", false).map(|(v, _)| v)
    }

    #[test]
    fn one_placeholder_is_the_value_itself_and_text_gets_pythons_str() {
        let inputs = json!({"n": 10, "x": 2.5, "s": "hi", "b": true, "m": {"k": [1, null]}, "none": null});
        let filled = scope_fill(
            json!({"count": "{inputs.n}", "text": "n={inputs.n} x={inputs.x} b={inputs.b} m={inputs.m} z={inputs.none}",
                   "deep": "{inputs.m.k}", "other": "{kept} {}", "list": ["{inputs.s}", 3]}),
            inputs,
        )
        .unwrap();
        assert_eq!(filled["count"], json!(10));
        assert_eq!(filled["text"], json!("n=10 x=2.5 b=True m={'k': [1, None]} z=None"));
        assert_eq!(filled["deep"], json!([1, null]));
        assert_eq!(filled["other"], json!("{kept} {}"));
        assert_eq!(filled["list"], json!(["hi", 3]));
    }

    #[test]
    fn unknown_inputs_and_misplaced_secrets_are_clear_errors() {
        let e = scope_fill(json!("{inputs.missing}"), json!({"a": 1})).unwrap_err().to_string();
        assert!(e.contains("names no input 'missing'") && e.contains("inputs: a"), "{e}");
        let e = scope_fill(json!("{inputs.a.b}"), json!({"a": 1})).unwrap_err().to_string();
        assert!(e.contains("inputs.a is a number"), "{e}");
        let e = scope_fill(json!("x {secrets.TOKEN}"), json!({})).unwrap_err().to_string();
        assert!(e.contains("headers only") && !e.contains("s3cr3t"), "{e}");
        let e = scope_fill(json!("{env.HOME}"), json!({})).unwrap_err().to_string();
        assert!(e.contains("placeholders name inputs"), "{e}");
    }

    #[test]
    fn secrets_fill_headers_and_are_reported() {
        let inputs = Map::new();
        let secret = |_: &str| -> Result<String, AgentError> { Ok("tok".into()) };
        let scope = Scope { inputs: &inputs, secret: &secret };
        let (v, used) = fill(&json!({"Authorization": "Bearer {secrets.TOKEN}"}), &scope, "h", true).unwrap();
        assert_eq!((v["Authorization"].as_str().unwrap(), used), ("Bearer tok", true));
        let (_, used) = fill(&json!({"A": "b"}), &scope, "h", true).unwrap();
        assert!(!used);
    }

    #[test]
    fn floats_are_written_as_python_writes_them() {
        for (f, want) in [
            (1.0, "1.0"),
            (2.5, "2.5"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123_456_789_012_345_680.0, "1.2345678901234568e+17"),
            (-0.5, "-0.5"),
            (0.1 + 0.2, "0.30000000000000004"),
        ] {
            assert_eq!(py_float(f), want, "{f}");
        }
    }

    #[test]
    fn inputs_become_the_values_flytekit_sees() {
        use prost_types::{Duration as PbDuration, Timestamp};
        assert_eq!(
            native(&Value::Datetime(Timestamp { seconds: 1_700_000_000, nanos: 123_000 })),
            json!("2023-11-14T22:13:20.000123+00:00")
        );
        assert_eq!(native(&Value::Datetime(Timestamp { seconds: 0, nanos: 0 })), json!("1970-01-01T00:00:00+00:00"));
        // Before 1970 and far ahead: written, never a panic.
        assert_eq!(
            native(&Value::Datetime(Timestamp { seconds: -1, nanos: 500_000 })),
            json!("1969-12-31T23:59:59.000500+00:00")
        );
        assert_eq!(
            native(&Value::Datetime(Timestamp { seconds: 951_782_400, nanos: 0 })),
            json!("2000-02-29T00:00:00+00:00")
        );
        assert_eq!(
            native(&Value::Datetime(Timestamp { seconds: -62_135_596_800, nanos: 0 })),
            json!("0001-01-01T00:00:00+00:00")
        );
        let _ = native(&Value::Datetime(Timestamp { seconds: i64::MAX / 2, nanos: i32::MAX }));
        assert_eq!(py_str(&native(&Value::Duration(PbDuration { seconds: 5, nanos: 0 }))), "5.0");
        let packed = rmp_serde::to_vec_named(&json!({"a": 1, "é": [true]})).unwrap();
        assert_eq!(
            native(&Value::Binary { value: packed, tag: "msgpack".into() }),
            json!("{\"a\": 1, \"\\u00e9\": [true]}")
        );
        assert_eq!(py_str(&json!({"q": "it's"})), "{'q': \"it's\"}");
    }
}
