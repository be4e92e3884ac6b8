//! The engine: plain Rust, no napi types. Opens and resumes change streams, classifies
//! errors, backs off, and decides how to re-open.

pub mod backoff;
pub mod batch;
pub mod checkpoint;
pub mod client_pool;
pub mod cursor;
pub mod errors;
mod fields;
mod handle;
pub mod oplog;
mod outage;
pub mod position;
pub mod redact;
mod reporter;
pub mod resume;
pub mod spec;
pub mod status;
pub mod store;
pub mod stream;
mod worker;

pub use errors::{EngineError, ErrorCode};
pub use oplog::OplogWindow;
pub use spec::WatchSpec;
pub use status::{Health, StreamState};
pub use stream::{ChangeStreamEngine, EndReason, EventBatch, StreamItem};

#[cfg(test)]
mod live_tests;
