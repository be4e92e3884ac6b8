//! The napi layer: converts options, hands batches to JS as Buffers. No policy here.

mod args;
mod logging;
mod positions;
mod reader;
mod store;
mod types;
