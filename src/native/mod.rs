//! The napi layer: converts options, hands batches to JS as Buffers. No policy here.

mod args;
mod cursor;
mod logging;
mod store;
mod stream;
