//! Consumer groups: several processes share one named reader's position. Exactly one
//! member (the lease holder) reads; the others wait as standbys and take over when the
//! holder's lease lapses or is released. Leases live in a MongoDB collection (`lease.rs`);
//! each acquisition has a higher epoch, which fences the holder's position writes
//! (`durable::checkpoint`). `member.rs` is the state machine of one member.

pub mod hashed_key;
mod lease;
mod member;
pub mod partitions;
pub mod server_split;

use std::time::Duration;

use mongodb::bson::{Bson, Document};

use crate::engine::errors::EngineError;
use crate::engine::options::{optional_string, optional_whole, prefix, reject_unknown, type_name};
use server_split::SplitChoice;

pub use member::{GroupHealth, LossReason, Membership};

/// The default lease: a holder that stops renewing is replaced within about this long.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Shorter leases would renew more often than a loaded server answers reliably.
const MIN_LEASE_MS: u64 = 200;

/// Where the leases are kept, by default: on the token store's deployment.
pub const DEFAULT_DB: &str = "resilient_change_stream";
pub const DEFAULT_COLLECTION: &str = "leases";

/// `group: { leaseMs, member, uri, db, collection, partitions, split }`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub lease: Duration,
    /// This process's name in the group (the facade defaults it to host:pid:random).
    pub member: String,
    /// The coordination deployment; `None`: the token store's (or the reader's).
    pub uri: Option<String>,
    pub db: String,
    pub collection: String,
    /// `partitions: P`: the stream's events are split by a hash of `documentKey` into P
    /// partitions, each with its own lease and stored position (`partitions.rs`).
    pub partitions: Option<u32>,
    /// `split`: where a partitioned member's events are split (`server_split.rs`).
    pub split: SplitChoice,
}

/// The most partitions a group may have (each is a lease and a stored position).
pub const MAX_PARTITIONS: u64 = 1024;

impl GroupSpec {
    pub const FIELD: &'static str = "group";

    /// Parses `group` of a reader's options (`None`: not in a group).
    pub fn parse(doc: &Document) -> Result<Option<Self>, EngineError> {
        let d = match doc.get(Self::FIELD) {
            None | Some(Bson::Null) => return Ok(None),
            Some(Bson::Document(d)) => d,
            Some(other) => return Err(EngineError::invalid_option(
                "group",
                "an object ({ leaseMs?, member?, uri?, db?, collection?, partitions?, split? })",
                type_name(other),
            )),
        };
        const FIELDS: &[&str] = &[
            "leaseMs",
            "member",
            "uri",
            "db",
            "collection",
            "partitions",
            "split",
        ];
        reject_unknown(d, &[FIELDS], "group.")?;
        let string = |n: &str| optional_string(d, n).map_err(|e| prefix(e, "group."));
        let lease_ms = optional_whole(d, "leaseMs", u32::MAX as u64)
            .map_err(|e| prefix(e, "group."))?
            .unwrap_or(DEFAULT_LEASE.as_millis() as u64);
        if lease_ms < MIN_LEASE_MS {
            return Err(EngineError::invalid_option(
                "group.leaseMs",
                &format!("at least {MIN_LEASE_MS}"),
                &lease_ms.to_string(),
            ));
        }
        let partitions = match d.get("partitions") {
            None | Some(Bson::Null) => None,
            Some(v) => {
                let n = crate::engine::options::as_f64(v)
                    .filter(|n| n.fract() == 0.0 && *n >= 1.0 && *n <= MAX_PARTITIONS as f64);
                match n {
                    Some(n) => Some(n as u32),
                    None => {
                        return Err(EngineError::invalid_option(
                            "group.partitions",
                            &format!("an integer 1..={MAX_PARTITIONS}"),
                            &match v {
                                Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_) => {
                                    crate::engine::options::as_f64(v)
                                        .map_or_else(|| type_name(v).to_string(), |n| n.to_string())
                                }
                                other => type_name(other).to_string(),
                            },
                        ))
                    }
                }
            }
        };
        let split = match string("split")? {
            None => SplitChoice::default(),
            Some(_) if partitions.is_none() => {
                return Err(EngineError::invalid_option(
                    "group.split",
                    "given only with group.partitions",
                    "a group without partitions",
                ))
            }
            Some(s) => SplitChoice::parse(&s).ok_or_else(|| {
                EngineError::invalid_option("group.split", "'auto' or 'client'", &format!("'{s}'"))
            })?,
        };
        let uri = string("uri")?;
        if let Some(uri) = &uri {
            if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
                return Err(EngineError::invalid_option(
                    "group.uri",
                    "a connection string starting with mongodb:// or mongodb+srv://",
                    "another string",
                ));
            }
        }
        Ok(Some(GroupSpec {
            lease: Duration::from_millis(lease_ms),
            member: string("member")?.unwrap_or_else(default_member),
            uri,
            db: string("db")?.unwrap_or_else(|| DEFAULT_DB.into()),
            collection: string("collection")?.unwrap_or_else(|| DEFAULT_COLLECTION.into()),
            partitions,
            split,
        }))
    }
}

/// A member name unique enough without help from the facade: the process and a nonce.
fn default_member() -> String {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("pid{}-{nonce:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn parses_defaults_and_refuses_bad_values() {
        assert_eq!(GroupSpec::parse(&doc! {}).unwrap(), None);
        let g = GroupSpec::parse(&doc! {"group": {"member": "a"}})
            .unwrap()
            .unwrap();
        assert_eq!(g.lease, DEFAULT_LEASE);
        assert_eq!(
            (g.db.as_str(), g.collection.as_str()),
            (DEFAULT_DB, DEFAULT_COLLECTION)
        );
        let err = |d: Document| GroupSpec::parse(&d).unwrap_err().message;
        assert!(err(doc! {"group": 1}).contains("\"group\" must be an object"));
        assert!(
            err(doc! {"group": {"leaseMs": 10}}).contains("\"group.leaseMs\" must be at least 200")
        );
        assert!(err(doc! {"group": {"lease": 10}}).contains("unknown option \"group.lease\""));
        assert!(err(doc! {"group": {"uri": "x"}}).contains("\"group.uri\""));
        assert!(err(doc! {"group": {"partitions": 0}})
            .contains("\"group.partitions\" must be an integer 1..=1024, got 0"));
        assert!(err(doc! {"group": {"partitions": 1.5}}).contains("got 1.5"));
        assert!(err(doc! {"group": {"partitions": "6"}}).contains("got string"));
        let g = GroupSpec::parse(&doc! {"group": {"partitions": 6}})
            .unwrap()
            .unwrap();
        assert_eq!(g.partitions, Some(6));
        assert_eq!(g.split, SplitChoice::Auto);
        let g = GroupSpec::parse(&doc! {"group": {"partitions": 6, "split": "client"}})
            .unwrap()
            .unwrap();
        assert_eq!(g.split, SplitChoice::Client);
        assert!(err(doc! {"group": {"partitions": 6, "split": "server"}})
            .contains("\"group.split\" must be 'auto' or 'client', got 'server'"));
        assert!(err(doc! {"group": {"split": "client"}})
            .contains("\"group.split\" must be given only with group.partitions"));
    }
}
