//! Engine tests against a live server (`cargo test`). They live inside the crate because
//! an integration-test binary cannot link the napi symbols the cdylib leaves to Node.

mod cursor;
mod group;
mod stream;
mod support;
