//! Reading a RoadRunner `.rr.yaml`: the `rpc` and `kv` sections, nothing else.
//!
//! A user's whole `.rr.yaml` must load, so other sections (`http`, `server`, `logs`, ...)
//! are ignored. `${VAR}` and `${VAR:-default}` are expanded in every string value, as
//! RoadRunner does. Every error names the file, and the storage and key it concerns.

use std::fmt;
use std::path::{Path, PathBuf};

use rrkv_protocol::Address;
use serde_norway::{Mapping, Value};

/// The listen address when the configuration names none.
pub const DEFAULT_LISTEN: &str = "tcp://127.0.0.1:6001";

/// Drivers rrkv knows by name.
pub const KNOWN_DRIVERS: &[&str] = &["memory", "boltdb", "redis", "memcached"];

/// The parts of the configuration rrkv uses.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from; `None` for the built-in default.
    pub source: Option<PathBuf>,
    pub listen: Address,
    pub storages: Vec<StorageConfig>,
}

/// One entry of the `kv:` section.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub name: String,
    pub driver: String,
    /// The driver's options, from `kv.<name>.config` or, failing that, the top-level
    /// section `<name>` (RoadRunner's "global" fallback); an empty mapping if neither exists.
    pub options: Value,
    /// Where `options` came from, for error messages: `kv.<name>.config`, `<name>`, or `-`.
    pub options_path: String,
}

/// A configuration error: the file, the key path inside it, and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {}: {}", self.file, key, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The configuration used when there is no file: one memory storage named `default`.
    pub fn builtin_default() -> Config {
        Config {
            source: None,
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            storages: vec![StorageConfig {
                name: "default".into(),
                driver: "memory".into(),
                options: Value::Mapping(Mapping::new()),
                options_path: "-".into(),
            }],
        }
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        let mut config = Config::parse(&text, &file, &|name| std::env::var(name).ok())?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses configuration text; `file` names it in errors and `env` looks up variables.
    pub fn parse(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let err = |key: Option<&str>, message: String| ConfigError {
            file: file.to_string(),
            key: key.map(str::to_string),
            message,
        };
        let mut root: Value =
            serde_norway::from_str(text).map_err(|e| err(None, format!("not valid YAML: {e}")))?;
        if root.is_null() {
            root = Value::Mapping(Mapping::new());
        }
        expand_env(&mut root, env);
        let Value::Mapping(root) = root else {
            return Err(err(None, "expected a YAML mapping at the top level".into()));
        };

        let listen = match root.get("rpc") {
            None | Some(Value::Null) => DEFAULT_LISTEN.to_string(),
            Some(Value::Mapping(rpc)) => match rpc.get("listen") {
                None | Some(Value::Null) => DEFAULT_LISTEN.to_string(),
                Some(Value::String(s)) if s.is_empty() => DEFAULT_LISTEN.to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(err(
                        Some("rpc.listen"),
                        format!(
                            "expected a string like tcp://127.0.0.1:6001, found {}",
                            kind(other)
                        ),
                    ))
                }
            },
            Some(other) => {
                return Err(err(
                    Some("rpc"),
                    format!("expected a mapping, found {}", kind(other)),
                ))
            }
        };
        let listen: Address = listen
            .parse()
            .map_err(|e| err(Some("rpc.listen"), format!("{e}")))?;

        let kv = match root.get("kv") {
            Some(Value::Mapping(kv)) if !kv.is_empty() => kv,
            Some(Value::Mapping(_)) | None | Some(Value::Null) => {
                return Err(err(
                    Some("kv"),
                    "no storages configured: add at least one, for example\n  kv:\n    default:\n      driver: memory\n      config: {}".into(),
                ))
            }
            Some(other) => {
                return Err(err(Some("kv"), format!("expected a mapping of storages, found {}", kind(other))))
            }
        };

        let mut storages = Vec::new();
        for (name, entry) in kv {
            let Value::String(name) = name else {
                return Err(err(
                    Some("kv"),
                    format!("storage names must be strings, found {}", kind(name)),
                ));
            };
            let key = |suffix: &str| format!("kv.{name}{suffix}");
            let entry = match entry {
                Value::Null => {
                    tracing::warn!(file, storage = %name, "storage entry is empty; skipped");
                    continue;
                }
                Value::Mapping(entry) => entry,
                other => {
                    return Err(err(
                        Some(&key("")),
                        format!(
                            "expected a mapping with a `driver` key, found {}",
                            kind(other)
                        ),
                    ))
                }
            };
            let driver = match entry.get("driver") {
                Some(Value::String(d)) => d.clone(),
                None | Some(Value::Null) => {
                    return Err(err(
                        Some(&key(".driver")),
                        format!(
                            "missing: storage {name:?} must name its driver (one of: {})",
                            KNOWN_DRIVERS.join(", ")
                        ),
                    ))
                }
                Some(other) => {
                    return Err(err(
                        Some(&key(".driver")),
                        format!("expected a string, found {}", kind(other)),
                    ))
                }
            };
            if !KNOWN_DRIVERS.contains(&driver.as_str()) {
                return Err(err(
                    Some(&key(".driver")),
                    format!(
                        "unknown driver {driver:?}; known drivers: {}",
                        KNOWN_DRIVERS.join(", ")
                    ),
                ));
            }
            let (options, options_path) = match entry.get("config") {
                Some(local) if !local.is_null() => (local.clone(), key(".config")),
                _ => match root.get(name.as_str()) {
                    Some(global) if !global.is_null() => (global.clone(), name.clone()),
                    _ => (Value::Mapping(Mapping::new()), "-".to_string()),
                },
            };
            storages.push(StorageConfig {
                name: name.clone(),
                driver,
                options,
                options_path,
            });
        }
        if storages.is_empty() {
            return Err(err(
                Some("kv"),
                "every storage entry is empty; nothing to serve".into(),
            ));
        }
        Ok(Config {
            source: Some(PathBuf::from(file)),
            listen,
            storages,
        })
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in every string of the tree. A string that was
/// changed is read again as a YAML scalar, so `db: ${DB:-0}` gives the number 0.
fn expand_env(value: &mut Value, env: &dyn Fn(&str) -> Option<String>) {
    match value {
        Value::String(s) => {
            let expanded = expand_str(s, env);
            if expanded != *s {
                *value = match serde_norway::from_str::<Value>(&expanded) {
                    Ok(v @ (Value::Bool(_) | Value::Number(_))) => v,
                    _ => Value::String(expanded),
                };
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(|v| expand_env(v, env)),
        Value::Mapping(map) => map.values_mut().for_each(|v| expand_env(v, env)),
        Value::Tagged(tagged) => expand_env(&mut tagged.value, env),
        _ => {}
    }
}

/// `${VAR}` is the variable or empty; `${VAR:-default}` is the default when VAR is unset or
/// empty. Text without a closing brace is kept as written.
pub fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let body = &after[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {}
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("7001".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.yaml", &env)
    }

    #[test]
    fn reads_a_whole_roadrunner_file_and_ignores_other_sections() {
        let c = parse(
            "version: '3'\nserver:\n  command: php worker.php\nhttp:\n  address: 0.0.0.0:8080\n\
             rpc:\n  listen: tcp://127.0.0.1:${PORT:-6001}\n\
             kv:\n  sessions:\n    driver: memory\n    config: {}\n  cache:\n    driver: memory\n",
        )
        .unwrap();
        assert_eq!(c.listen, Address::Tcp("127.0.0.1:7001".into()));
        let names: Vec<_> = c.storages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["sessions", "cache"]);
        assert_eq!(c.storages[0].options_path, "kv.sessions.config");
        assert_eq!(c.storages[1].options_path, "-");
    }

    #[test]
    fn global_section_supplies_options() {
        let c =
            parse("kv:\n  redis-rr:\n    driver: redis\nredis-rr:\n  addrs: ['127.0.0.1:6379']\n")
                .unwrap();
        assert_eq!(c.storages[0].options_path, "redis-rr");
        assert!(c.storages[0].options.get("addrs").is_some());
    }

    #[test]
    fn env_expansion() {
        assert_eq!(expand_str("a${PORT}b", &env), "a7001b");
        assert_eq!(expand_str("${NOPE:-x}", &env), "x");
        assert_eq!(expand_str("${EMPTY:-d}", &env), "d");
        assert_eq!(expand_str("${NOPE}", &env), "");
        assert_eq!(expand_str("${UNCLOSED", &env), "${UNCLOSED");
        let c =
            parse("kv:\n  a:\n    driver: memory\n    config:\n      db: ${NOPE:-3}\n").unwrap();
        assert_eq!(
            c.storages[0].options.get("db"),
            Some(&Value::Number(3.into()))
        );
    }

    #[test]
    fn errors_name_file_storage_and_key() {
        let e = parse("kv:\n  s1:\n    config: {}\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("kv.s1.driver"));
        assert!(
            e.to_string()
                .starts_with("test.yaml: kv.s1.driver: missing"),
            "{e}"
        );

        let e = parse("kv:\n  s1:\n    driver: mongo\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "test.yaml: kv.s1.driver: unknown driver \"mongo\"; known drivers: memory, boltdb, redis, memcached"
        );

        let e =
            parse("rpc:\n  listen: 127.0.0.1:6001\nkv:\n  a:\n    driver: memory\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("rpc.listen"));
        assert!(e.message.contains("tcp://host:port"), "{e}");

        let e = parse("kv: [\n").unwrap_err();
        assert!(
            e.to_string().starts_with("test.yaml: not valid YAML"),
            "{e}"
        );

        let e = parse("http: {}\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("kv"));

        let e = parse("kv:\n  a: 5\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("kv.a"));
    }

    #[test]
    fn empty_listen_means_default() {
        let c = parse("rpc:\n  listen: ''\nkv:\n  a:\n    driver: memory\n").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }
}
