//! rrkv's measuring tools. They are clients: they talk to a running server over loopback and
//! read its resident memory from `/proc`, and know nothing of the server's internals.
//!
//! * [`memory`]: the memory scenarios (same key re-set with a TTL, distinct keys, mass expiry,
//!   churn), reporting server RSS over time.

pub mod chart;
pub mod compare;
pub mod load;
pub mod memory;
pub mod rss;
pub mod target;
