//! Secrets, in one place: which values are secret, how they are collected, how they
//! are masked. A secret never appears in a log line, an error, a plan, JSON output or a
//! stored record; everything that leaves the host goes through a [`Redactor`].
//!
//! Three sources, three lists, on purpose:
//! - **secret blocks**: every string in their data ([`secret_strings`]);
//! - **environment variables** referred to as `{{ $NAME }}`, by name
//!   ([`secret_env_name`]): names are conventions (`*_TOKEN`, `*_PASSWORD`), and masking
//!   a value that was not secret (an `AWS_ACCESS_KEY_ID`, an `AUTH_URL`) costs nothing
//!   but a `********` in a log, so the list is wide;
//! - **inputs written under secret-looking keys** ([`secret_input_key`]): keys are a
//!   plugin author's field names, seen in every plan, so the list is narrow —
//!   `aws_access_key_id` or `author` are not secrets and masking them would hide what a
//!   user needs to read.
//!
//! Values shorter than [`MIN_SECRET_LEN`] are never masked: masking every `1` would
//! destroy the log.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

/// Shortest value the redactor masks: masking every `1` or `ab` in a log would destroy
/// the log and hint at the secret anyway. Secrets this short are not secrets.
pub const MIN_SECRET_LEN: usize = 4;

/// Every string value inside a secret block's data (what the redactor must mask).
pub fn secret_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.len() >= MIN_SECRET_LEN => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|x| secret_strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| secret_strings(x, out)),
        _ => {}
    }
}

/// Names of environment variables whose values are treated as secrets.
pub fn secret_env_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "API_KEY",
        "ACCESS_KEY",
        "PRIVATE_KEY",
        "AUTH",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Input keys whose string values are secrets wherever they appear (`password`,
/// `aws_secret_access_key`, `minio_root_password`, `access_token`, `api_key`, ...).
pub fn secret_input_key(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "PRIVATE_KEY",
        "API_KEY",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// String values held under secret-looking keys, at any depth of a step's inputs: a
/// literal `aws_secret_access_key: ...` in a project file is as secret as a secret block.
pub fn keyed_secrets(v: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match x {
                        Value::String(s)
                            if secret_input_key(k)
                                && s.len() >= MIN_SECRET_LEN
                                && !s.contains("{{") =>
                        {
                            out.push(s.clone())
                        }
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// Replaces known secret values with `********` in any text leaving the host.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Arc<std::sync::RwLock<Vec<String>>>,
}

/// What a redacted secret looks like.
pub const MASK: &str = "********";

impl Redactor {
    /// A redactor for these secret values (empty values are ignored).
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut v: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        // Longest first, so a secret containing another is masked whole.
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self {
            secrets: Arc::new(std::sync::RwLock::new(v)),
        }
    }

    /// Mask one more value from now on (a credential a host call was handed, say).
    pub fn add(&self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let mut v = self.secrets.write().unwrap_or_else(|p| p.into_inner());
        if !v.iter().any(|s| s == secret) {
            v.push(secret.to_string());
            v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Whether `text` holds a secret (what [`Redactor::redact`] would mask).
    pub fn finds_in(&self, text: &str) -> bool {
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        secrets.iter().any(|s| text.contains(s.as_str()))
    }

    /// The text with every secret masked.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), MASK));
            }
        }
        out
    }
}

/// A copy of `v` with every string redacted, and every number that is a secret (a
/// secret block may hold one) replaced by the mask.
pub fn redact_value(v: &Value, r: &Redactor) -> Value {
    match v {
        Value::String(s) => Value::String(r.redact(s).into_owned()),
        Value::Number(n) if r.finds_in(&n.to_string()) => Value::String(MASK.into()),
        Value::Array(items) => Value::Array(items.iter().map(|x| redact_value(x, r)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), redact_value(x, r)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_number_is_masked_in_a_value() {
        let r = Redactor::new(["54329871".to_string()]);
        let v = serde_json::json!({"a": 54329871, "b": 7, "c": ["x54329871y"]});
        assert_eq!(
            redact_value(&v, &r),
            serde_json::json!({"a": MASK, "b": 7, "c": [format!("x{MASK}y")]})
        );
    }

    #[test]
    fn masks_every_secret_longest_first() {
        let r = Redactor::new(["abc".to_string(), "abcdef".to_string(), String::new()]);
        assert_eq!(r.redact("x abcdef y abc z"), "x ******** y ******** z");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }
}
