//! The napi layer: converts options, hands batches to JS as Buffers. No policy here.

mod cursor;
mod logging;
mod store;
mod stream;
