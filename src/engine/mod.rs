//! The engine: plain Rust, no napi types. Layers, each pointing only downwards:
//!
//! - `stream/`, `cursor/`: what differs between a change stream and a restartable cursor —
//!   their options, how they open and re-open, how a reply moves their position. Each is a
//!   `reader::Source`.
//! - `reader/`: ONE runtime under both (open, resume, backoff, stall watchdog, outage
//!   reporting, ordered close, the consumer's commits).
//! - `group/`: consumer groups (leases, epochs): which member reads.
//! - `durable/`: positions, checkpoints and token stores.
//! - `position_tools`: the `positions` CLI's list / rewind / reset of stored positions
//!   (uses `durable/` and the stream's oplog window).
//! - leaves: `errors` (the one classification), `options` (typed option readers),
//!   `backoff`, `client_pool`, `redact`.

pub mod backoff;
pub mod client_pool;
pub mod cursor;
pub mod durable;
pub mod errors;
pub mod group;
pub mod options;
pub mod position_tools;
pub mod reader;
pub mod redact;
pub mod stream;

pub use errors::{EngineError, ErrorCode};

#[cfg(test)]
mod live_tests;
