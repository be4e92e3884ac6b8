//! resilient-change-stream: a MongoDB change stream for Node.js that never loses its place.
//!
//! Panic policy: no `unwrap()` on paths a server or a user can reach. A panic is a bug; if
//! one happens inside a reader's run loop, the reader reports a `ClientError` instead of
//! hanging or ending silently (see `Reader::next` in `engine::reader`).

pub(crate) mod engine;
mod native;
