//! Storage drivers, and building them from configuration.

pub mod boltdb;
pub mod memcached;
pub mod memory;
mod options;
pub mod redis;

use std::sync::Arc;

use rrkv_engine::{Clock, Engine, DEFAULT_SHARDS};

use crate::config::{Config, ConfigError, StorageConfig};
use crate::storage::Storage;

/// What drivers may share: today, the clock the memory engine reads.
#[derive(Clone)]
pub struct BuildContext {
    pub clock: Arc<dyn Clock>,
}

impl Default for BuildContext {
    fn default() -> Self {
        BuildContext {
            clock: Arc::new(rrkv_engine::SystemClock),
        }
    }
}

/// Fails if two storages would open the same file: each file belongs to one storage.
pub fn check_conflicts(config: &Config) -> Result<(), ConfigError> {
    let file = config.source.as_ref().map_or_else(
        || "(built-in configuration)".to_string(),
        |p| p.display().to_string(),
    );
    let mut seen: Vec<(std::path::PathBuf, &str)> = Vec::new();
    for storage in config.storages.iter().filter(|s| s.driver == "boltdb") {
        let Ok(options) = boltdb::parse_options(&storage.options) else {
            continue; // reported when the storage is built
        };
        let path = normalize(&options.file);
        if let Some((_, other)) = seen.iter().find(|(p, _)| *p == path) {
            return Err(ConfigError {
                file,
                key: Some(format!("kv.{}.config.file", storage.name)),
                message: format!(
                    "storages {other:?} and {:?} both use {}; give each boltdb storage its own file",
                    storage.name,
                    options.file.display()
                ),
            });
        }
        seen.push((path, storage.name.as_str()));
    }
    Ok(())
}

/// An absolute path with symlinks in its directory resolved, for comparing file names.
fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    let absolute = std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => dir.canonicalize().map(|d| d.join(name)).unwrap_or(absolute),
        _ => absolute,
    }
}

/// Builds one storage. Errors name the configuration file and the storage's keys.
pub fn build(
    config: &Config,
    storage: &StorageConfig,
    ctx: &BuildContext,
) -> Result<Arc<dyn Storage>, ConfigError> {
    let file = config.source.as_ref().map_or_else(
        || "(built-in configuration)".to_string(),
        |p| p.display().to_string(),
    );
    let options_key = |key: &str| {
        let base = if storage.options_path == "-" {
            format!("kv.{}.config", storage.name)
        } else {
            storage.options_path.clone()
        };
        if key.is_empty() {
            base
        } else {
            format!("{base}.{key}")
        }
    };
    let bad_option = |(key, message): (String, String)| ConfigError {
        file: file.clone(),
        key: Some(options_key(&key)),
        message,
    };
    // Upstream fails to start a networked storage that has no config section, rather than
    // guess where its servers are.
    let require_section = |example: &str| {
        if storage.options_path == "-" {
            Err(ConfigError {
                file: file.clone(),
                key: Some(format!("kv.{}.config", storage.name)),
                message: format!(
                    "the {} driver needs a config section, e.g. `config: {{ {example} }}`",
                    storage.driver
                ),
            })
        } else {
            Ok(())
        }
    };
    match storage.driver.as_str() {
        "memory" => {
            // The memory driver has no options; upstream's old `interval` key is accepted
            // and ignored, since expiry here is exact rather than periodic.
            let engine = Engine::with_clock(ctx.clock.clone(), DEFAULT_SHARDS);
            Ok(Arc::new(memory::MemoryStorage::new(engine)))
        }
        "boltdb" => {
            let options = boltdb::parse_options(&storage.options).map_err(bad_option)?;
            let bolt =
                boltdb::BoltStorage::open(&options, ctx.clock.clone()).map_err(|message| {
                    ConfigError {
                        file: file.clone(),
                        key: Some(options_key("file")),
                        message,
                    }
                })?;
            Ok(Arc::new(bolt))
        }
        "redis" => {
            require_section("addrs: [\"127.0.0.1:6379\"]")?;
            let options = redis::parse_options(&storage.options).map_err(bad_option)?;
            let redis =
                redis::RedisStorage::new(&options, ctx.clock.clone()).map_err(bad_option)?;
            Ok(Arc::new(redis))
        }
        "memcached" => {
            require_section("addr: [\"127.0.0.1:11211\"]")?;
            let options = memcached::parse_options(&storage.options).map_err(bad_option)?;
            let memcached = memcached::MemcachedStorage::new(&options, ctx.clock.clone())
                .map_err(|message| bad_option((String::new(), message)))?;
            Ok(Arc::new(memcached))
        }
        other => Err(ConfigError {
            file,
            key: Some(format!("kv.{}.driver", storage.name)),
            message: format!("unknown driver {other:?}"),
        }),
    }
}
