//! Reading driver options the way RoadRunner's `.rr.yaml` writes them.
//!
//! Each helper returns the message only; the caller pairs it with the option's key so the
//! startup error names `kv.<name>.config.<key>` and the file.

use std::time::Duration;

use serde_norway::Value;

/// The options mapping, or an empty one when the section is absent.
pub fn mapping<'a>(
    options: &'a Value,
    driver: &str,
    keys: &str,
) -> Result<Vec<(&'a str, &'a Value)>, (String, String)> {
    match options {
        Value::Mapping(map) => Ok(map
            .iter()
            .map(|(k, v)| (k.as_str().unwrap_or_default(), v))
            .collect()),
        Value::Null => Ok(Vec::new()),
        _ => Err((
            String::new(),
            format!("expected a mapping of {driver} options ({keys})"),
        )),
    }
}

/// A list of `host:port` addresses; a single string is taken as a list of one.
pub fn addresses(value: &Value) -> Result<Vec<String>, String> {
    let items: Vec<&Value> = match value {
        Value::Sequence(seq) => seq.iter().collect(),
        Value::String(_) => vec![value],
        _ => return Err("expected a list of host:port addresses".into()),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Some(text) = item.as_str().map(str::trim) else {
            return Err("expected a list of host:port addresses".into());
        };
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                out.push(text.to_string())
            }
            _ => return Err(format!("{text:?} is not a host:port address")),
        }
    }
    if out.is_empty() {
        return Err("the address list is empty; give at least one host:port".into());
    }
    Ok(out)
}

/// A Go duration (`5s`, `300ms`, `1m30s`). `0` (or an empty string) means "use the default",
/// as it does upstream, and gives `None`.
pub fn go_duration(value: &Value) -> Result<Option<Duration>, String> {
    let text = match value {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) if n.as_u64() == Some(0) => return Ok(None),
        Value::Null => return Ok(None),
        _ => return Err("expected a duration such as 5s or 300ms".into()),
    };
    if text.is_empty() || text == "0" {
        return Ok(None);
    }
    let parsed: jiff::SignedDuration = text
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write it like 5s, 300ms or 1m30s"))?;
    if parsed.is_negative() {
        return Err(format!("{text:?} is negative"));
    }
    Ok(Some(parsed.unsigned_abs()).filter(|d| !d.is_zero()))
}

/// A non-negative integer.
pub fn unsigned(value: &Value) -> Result<u64, String> {
    value
        .as_u64()
        .ok_or_else(|| "expected a whole number of 0 or more".to_string())
}

/// A string (numbers are accepted as their text, for passwords such as `1234`).
pub fn text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err("expected a string".into()),
    }
}

/// A boolean.
pub fn boolean(value: &Value) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| "expected true or false".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_norway::from_str(text).unwrap()
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(go_duration(&yaml("5s")), Ok(Some(Duration::from_secs(5))));
        assert_eq!(
            go_duration(&yaml("1m30s")),
            Ok(Some(Duration::from_secs(90)))
        );
        assert_eq!(
            go_duration(&yaml("300ms")),
            Ok(Some(Duration::from_millis(300)))
        );
        assert_eq!(go_duration(&yaml("0")), Ok(None));
        assert_eq!(go_duration(&yaml("'0s'")), Ok(None));
        assert!(go_duration(&yaml("5")).is_err());
        assert!(go_duration(&yaml("soon")).unwrap_err().contains("5s"));
        assert!(go_duration(&yaml("-1s")).is_err());
    }

    #[test]
    fn addresses_accept_a_list_or_one_string() {
        assert_eq!(
            addresses(&yaml("[127.0.0.1:6379, 'redis:6380']")),
            Ok(vec!["127.0.0.1:6379".to_string(), "redis:6380".to_string()])
        );
        assert_eq!(
            addresses(&yaml("localhost:11211")),
            Ok(vec!["localhost:11211".to_string()])
        );
        assert!(addresses(&yaml("[localhost]"))
            .unwrap_err()
            .contains("host:port"));
        assert!(addresses(&yaml("[]")).is_err());
    }
}
