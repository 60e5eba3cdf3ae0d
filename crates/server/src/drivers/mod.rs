//! Storage drivers, and building them from configuration.

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
        other => Err(ConfigError {
            file,
            key: Some(format!("kv.{}.driver", storage.name)),
            message: format!(
                "the {other} driver is not available in this build of rrkv yet; use driver: memory"
            ),
        }),
    }
}
