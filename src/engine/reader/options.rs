//! The options every reader shares, declared and parsed once: the connection, the backoff,
//! the stall watchdog, and durability.

use std::time::Duration;

use mongodb::bson::{Bson, Document};

use crate::engine::backoff::BackoffPolicy;
use crate::engine::durable::Durability;
use crate::engine::errors::EngineError;
use crate::engine::group::GroupSpec;
use crate::engine::options::{optional_whole, reject_unknown, type_name};

/// Default `stallTimeoutMS`: well above mongod's 10 s idle no-op interval.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What every reader is given besides what it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ReaderOptions {
    pub uri: String,
    pub backoff: BackoffPolicy,
    /// Re-open when no reply comes within the await time plus this (and, for a change
    /// stream on a server that advances idle streams, when the position does not move for
    /// this long). `None`: off.
    pub stall_timeout: Option<Duration>,
    pub durability: Option<Durability>,
    /// A consumer group this reader is a member of (needs `durability`).
    pub group: Option<GroupSpec>,
}

impl ReaderOptions {
    const OWN_FIELDS: &'static [&'static str] =
        &["uri", "backoff", "stallTimeoutMS", GroupSpec::FIELD];

    /// Parses the shared options of `doc`, and refuses any key that is neither one of them
    /// nor in `reader_fields` (the reader's own options).
    pub fn parse(doc: &Document, reader_fields: &[&str]) -> Result<Self, EngineError> {
        reject_unknown(
            doc,
            &[Self::OWN_FIELDS, Durability::FIELDS, reader_fields],
            "",
        )?;
        let uri = parse_uri(doc.get("uri"))?;
        let backoff = BackoffPolicy::parse(doc.get("backoff"))?;
        // 0 turns the watchdog off; absent means the default.
        let stall_timeout = match doc.get("stallTimeoutMS") {
            None => Some(DEFAULT_STALL_TIMEOUT),
            Some(_) => optional_whole(doc, "stallTimeoutMS", u32::MAX as u64)?
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
        };
        let durability = Durability::parse(doc)?;
        let group = GroupSpec::parse(doc)?;
        if group.is_some() && durability.is_none() {
            return Err(EngineError::invalid_option(
                "name",
                "a string naming the group's position when \"group\" is given (with a shared \"tokenStore\")",
                "nothing",
            ));
        }
        Ok(ReaderOptions {
            uri,
            backoff,
            stall_timeout,
            durability,
            group,
        })
    }
}

fn parse_uri(value: Option<&Bson>) -> Result<String, EngineError> {
    match value {
        Some(Bson::String(s)) if s.starts_with("mongodb://") || s.starts_with("mongodb+srv://") => {
            Ok(s.clone())
        }
        Some(Bson::String(_)) => Err(EngineError::invalid_option(
            "uri",
            "a connection string starting with mongodb:// or mongodb+srv://",
            "another string",
        )),
        Some(other) => Err(EngineError::invalid_option(
            "uri",
            "a non-empty connection string",
            type_name(other),
        )),
        None => Err(EngineError::invalid_option(
            "uri",
            "a non-empty connection string",
            "nothing",
        )),
    }
}
