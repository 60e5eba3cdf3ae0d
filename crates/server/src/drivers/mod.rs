//! Storage drivers, and building them from configuration.

pub mod boltdb;
pub mod memory;

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
    match storage.driver.as_str() {
        "memory" => {
            // The memory driver has no options; upstream's old `interval` key is accepted
            // and ignored, since expiry here is exact rather than periodic.
            let engine = Engine::with_clock(ctx.clock.clone(), DEFAULT_SHARDS);
            Ok(Arc::new(memory::MemoryStorage::new(engine)))
        }
        "boltdb" => {
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
            let options =
                boltdb::parse_options(&storage.options).map_err(|(key, message)| ConfigError {
                    file: file.clone(),
                    key: Some(options_key(&key)),
                    message,
                })?;
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
        other => Err(ConfigError {
            file,
            key: Some(format!("kv.{}.driver", storage.name)),
            message: format!(
                "the {other} driver is not available in this build of rrkv yet; use driver: memory"
            ),
        }),
    }
}
