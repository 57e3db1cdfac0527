//! Reading the fields of a JSON request body with one clear message per bad field, all
//! collected, rather than serde's first error without a field name.

use serde_json::{Map, Value};

use super::http::FieldError;

/// The fields of one JSON object, and the problems found so far.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

/// What is wrong with a body that is not an object at all.
pub const NOT_AN_OBJECT: &str = "the body must be a JSON object";

impl<'a> Fields<'a> {
    /// `None` when the value is not an object.
    pub fn of(value: &'a Value) -> Option<Self> {
        value.as_object().map(|obj| Self {
            obj,
            errors: Vec::new(),
        })
    }

    fn bad(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// A field that must be present (and not null).
    fn present(&mut self, field: &str, required: bool) -> Option<&'a Value> {
        match self.obj.get(field) {
            None | Some(Value::Null) => {
                if required {
                    self.bad(field, "is required");
                }
                None
            }
            Some(v) => Some(v),
        }
    }

    /// A string of 1..=`max` characters, none of them control characters.
    pub fn string(&mut self, field: &str, required: bool, max: usize) -> Option<String> {
        let v = self.present(field, required)?;
        let Some(s) = v.as_str() else {
            self.bad(field, format!("must be a string, not {}", type_name(v)));
            return None;
        };
        if s.trim().is_empty() {
            self.bad(field, "must not be empty");
            None
        } else if s.chars().count() > max {
            self.bad(field, format!("must be at most {max} characters"));
            None
        } else if s.chars().any(char::is_control) {
            self.bad(field, "must not contain control characters");
            None
        } else {
            Some(s.to_string())
        }
    }

    /// A whole number in `min..=max` (`2.0` and `"2"` are not whole numbers here).
    pub fn integer(&mut self, field: &str, required: bool, min: i64, max: i64) -> Option<i64> {
        let v = self.present(field, required)?;
        let range = || format!("must be a whole number from {min} to {max}");
        match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(_) => {
                self.bad(field, range());
                None
            }
            None if v.is_number() => {
                self.bad(field, range());
                None
            }
            None => {
                self.bad(field, format!("{}, not {}", range(), type_name(v)));
                None
            }
        }
    }

    /// A number (integer or decimal) in `min..=max`.
    pub fn number(&mut self, field: &str, required: bool, min: f64, max: f64) -> Option<f64> {
        let v = self.present(field, required)?;
        match v.as_f64() {
            Some(n) if n.is_finite() && (min..=max).contains(&n) => Some(n),
            Some(_) => {
                self.bad(field, format!("must be a number from {min} to {max}"));
                None
            }
            None => {
                self.bad(field, format!("must be a number, not {}", type_name(v)));
                None
            }
        }
    }

    /// An object of string values, at most `max_entries`, keys and values bounded.
    pub fn string_map(
        &mut self,
        field: &str,
        max_entries: usize,
        max_len: usize,
    ) -> Option<Vec<(String, String)>> {
        let v = self.present(field, false)?;
        let Some(map) = v.as_object() else {
            self.bad(field, format!("must be an object, not {}", type_name(v)));
            return None;
        };
        if map.len() > max_entries {
            self.bad(field, format!("must have at most {max_entries} entries"));
            return None;
        }
        let mut out = Vec::new();
        for (k, v) in map {
            let f = format!("{field}.{k}");
            match v.as_str() {
                _ if k.is_empty() || k.len() > max_len => {
                    self.bad(&f, format!("keys are 1 to {max_len} bytes"))
                }
                Some(s) if s.len() <= max_len => out.push((k.clone(), s.to_string())),
                Some(_) => self.bad(&f, format!("must be at most {max_len} bytes")),
                None => self.bad(&f, format!("must be a string, not {}", type_name(v))),
            }
        }
        Some(out)
    }

    /// Every field not in `known` is an error (a typo must not pass silently).
    pub fn reject_unknown(&mut self, known: &[&str], hint: &[(&str, &str)]) {
        let unknown: Vec<String> = self
            .obj
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            let message = hint.iter().find(|(f, _)| *f == k).map_or_else(
                || format!("is not a known field (known: {})", known.join(", ")),
                |(_, h)| (*h).to_string(),
            );
            self.bad(&k, message);
        }
    }

    /// No problem found so far.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn add_error(&mut self, field: &str, message: impl Into<String>) {
        self.bad(field, message);
    }

    /// The problems found, if any.
    pub fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_bad_field_is_named() {
        let v = json!({ "a": 5, "b": "", "n": "2", "m": 2.5, "x": 1, "big": 5000 });
        let mut f = Fields::of(&v).unwrap();
        assert_eq!(f.string("a", true, 10), None);
        assert_eq!(f.string("b", true, 10), None);
        assert_eq!(f.string("missing", true, 10), None);
        assert_eq!(f.string("optional", false, 10), None);
        assert_eq!(f.integer("n", true, 1, 10), None);
        assert_eq!(f.integer("m", true, 1, 10), None);
        assert_eq!(f.integer("big", true, 1, 1000), None);
        f.reject_unknown(
            &["a", "b", "n", "m", "big"],
            &[("x", "x is computed by the server")],
        );
        let errors = f.finish().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["a", "b", "missing", "n", "m", "big", "x"]);
        assert_eq!(errors[0].message, "must be a string, not a number");
        assert_eq!(errors[2].message, "is required");
        assert!(errors[3].message.contains("not a string"), "{errors:?}");
        assert_eq!(errors[6].message, "x is computed by the server");
    }

    #[test]
    fn good_fields_pass() {
        let v = json!({ "s": "ok", "n": 3, "f": 2.5, "m": { "k": "v" } });
        let mut f = Fields::of(&v).unwrap();
        assert_eq!(f.string("s", true, 10).as_deref(), Some("ok"));
        assert_eq!(f.integer("n", true, 1, 10), Some(3));
        assert_eq!(f.number("f", true, 0.0, 10.0), Some(2.5));
        assert_eq!(
            f.string_map("m", 4, 10),
            Some(vec![("k".into(), "v".into())])
        );
        assert!(f.finish().is_ok());
        assert!(Fields::of(&json!([1])).is_none());
    }
}
