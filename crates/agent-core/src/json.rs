//! `google.protobuf.Struct` ⇄ JSON.
//!
//! Task templates carry plugin settings in `TaskTemplate.custom`, a protobuf `Struct`
//! whose numbers are all doubles: flytekit's `num_workers: 1` arrives as `1.0`. APIs that
//! receive these settings (Databricks, BigQuery, …) reject `1.0` where they want an
//! integer, so integral doubles come out as JSON integers here.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Number, Value as Json};

/// Largest integer a double represents exactly (2^53). Beyond it an "integral" double
/// may already have lost digits, so it stays a float rather than pretend to be exact.
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// Converts a `Struct` to a JSON object; integral numbers become JSON integers.
pub fn struct_to_json(s: &Struct) -> Map<String, Json> {
    s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect()
}

/// Converts a protobuf `Value` to JSON; integral numbers become JSON integers.
pub fn value_to_json(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StructValue(s)) => Json::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
    }
}

fn number_to_json(n: f64) -> Json {
    if n.is_finite() && n.fract() == 0.0 && n.abs() <= MAX_EXACT_INT {
        // The range check above makes this cast exact.
        #[allow(clippy::cast_possible_truncation)]
        return Json::Number(Number::from(n as i64));
    }
    // NaN and infinities have no JSON form.
    Number::from_f64(n).map_or(Json::Null, Json::Number)
}

/// Converts a JSON object to a `Struct`.
pub fn json_to_struct(m: &Map<String, Json>) -> Struct {
    Struct { fields: m.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect() }
}

/// Converts JSON to a protobuf `Value`. Every number becomes a double, as protobuf demands.
pub fn json_to_value(j: &Json) -> Value {
    let kind = match j {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(ListValue { values: a.iter().map(json_to_value).collect() }),
        Json::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn integral_doubles_become_integers_and_others_stay_floats() {
        let j = json!({
            "num_workers": 1.0, "ratio": 0.5, "neg": -3.0, "big": 9_007_199_254_740_992.0_f64,
            "too_big": 1e300, "name": "x", "nested": {"list": [1.0, 2.5, null, true]}
        });
        let s = json_to_struct(j.as_object().unwrap());
        let back = Json::Object(struct_to_json(&s));
        assert_eq!(
            back,
            json!({
                "num_workers": 1, "ratio": 0.5, "neg": -3, "big": 9_007_199_254_740_992_i64,
                "too_big": 1e300, "name": "x", "nested": {"list": [1, 2.5, null, true]}
            })
        );
        assert_eq!(serde_json::to_string(&back["num_workers"]).unwrap(), "1");
    }

    #[test]
    fn non_finite_numbers_become_null() {
        let v = Value { kind: Some(Kind::NumberValue(f64::NAN)) };
        assert_eq!(value_to_json(&v), Json::Null);
        assert_eq!(value_to_json(&Value { kind: None }), Json::Null);
    }
}
