//! The position tools behind `resilient-change-stream positions`: list, rewind and reset
//! the stored positions of a file or MongoDB token store. A rewind to a time is checked
//! against the oplog first (a time it no longer holds is refused), and a position held by
//! a consumer group's live lease is moved only when forced, fencing the holder. Nothing
//! returned holds a connection string.

use std::sync::Arc;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document, RawDocumentBuf, Timestamp};

use crate::engine::client_pool::{client_for, SharedCollection};
use crate::engine::durable::position::{Position, PositionRecord, ReaderKind};
use crate::engine::durable::store::{FileStore, MongoStore, TokenStore, EPOCH_FIELD};
use crate::engine::errors::{EngineError, ErrorCode};
use crate::engine::stream::oplog::{read_window, OplogWindow};
use crate::engine::stream::token_time::keystring_token_time;

/// Where consumer groups keep their leases unless told otherwise (on the token store's
/// deployment).
pub const DEFAULT_LEASE_DB: &str = "resilient_change_stream";
pub const DEFAULT_LEASE_COLLECTION: &str = "leases";

/// A token store the tools can read and write.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreLocation {
    /// One record per file (the file store ignores names).
    File { path: String },
    /// One document per name (`_id`).
    MongoDb {
        uri: String,
        db: String,
        collection: String,
    },
}

impl StoreLocation {
    fn store(&self) -> Arc<dyn TokenStore> {
        match self {
            StoreLocation::File { path } => Arc::new(FileStore::new(path.into())),
            StoreLocation::MongoDb {
                uri,
                db,
                collection,
            } => Arc::new(MongoStore::new(uri.clone(), db.clone(), collection.clone())),
        }
    }

    /// Where it stores, for messages; no credentials.
    pub fn describe(&self) -> String {
        self.store().describe()
    }

    /// The deployment of a MongoDB store.
    fn uri(&self) -> Option<&str> {
        match self {
            StoreLocation::File { .. } => None,
            StoreLocation::MongoDb { uri, .. } => Some(uri),
        }
    }
}

/// One stored record, as stored (without the MongoDB store's `_id`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPosition {
    pub name: String,
    pub record: Document,
}

/// The stored positions, all or the one named `name`, in name order.
pub async fn list_positions(
    store: &StoreLocation,
    name: Option<&str>,
) -> Result<Vec<StoredPosition>, EngineError> {
    match store {
        StoreLocation::File { .. } => {
            let loaded = store.store().load(name.unwrap_or("")).await?;
            Ok(loaded
                .map(|record| StoredPosition {
                    name: record.get_str("name").unwrap_or("").to_string(),
                    record,
                })
                .filter(|p| name.is_none_or(|n| p.name == n))
                .into_iter()
                .collect())
        }
        StoreLocation::MongoDb {
            uri,
            db,
            collection,
        } => {
            let records = SharedCollection::new(uri.clone(), db.clone(), collection.clone());
            let filter = name.map_or_else(Document::new, |n| doc! {"_id": n});
            let failed = |e: mongodb::error::Error| {
                let cause = EngineError {
                    code: ErrorCode::TokenStore,
                    ..EngineError::from_driver(&e)
                };
                prefixed(cause, &format!("cannot read {}: ", store.describe()))
            };
            let docs: Vec<Document> = records
                .get()
                .await?
                .find(filter)
                .sort(doc! {"_id": 1})
                .await
                .map_err(failed)?
                .try_collect()
                .await
                .map_err(failed)?;
            Ok(docs
                .into_iter()
                .map(|mut record| {
                    let name = match record.remove("_id") {
                        Some(Bson::String(s)) => s,
                        Some(other) => other.to_string(),
                        None => String::new(),
                    };
                    StoredPosition { name, record }
                })
                .collect())
        }
    }
}

/// The oplog's oldest and newest entries on `uri`'s deployment.
pub async fn oplog_window(uri: &str) -> Result<OplogWindow, EngineError> {
    let client = client_for(uri).await?;
    read_window(&client, None).await
}

/// A consumer group's lease on a stream name (the groups' lease document).
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub holder: Option<String>,
    pub epoch: i64,
    pub renewed_at: DateTime,
    pub lease_ms: i64,
    pub released: bool,
}

impl Lease {
    fn from_document(d: &Document) -> Self {
        let number = |field: &str| match d.get(field) {
            Some(Bson::Int32(n)) => *n as i64,
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Double(n)) => *n as i64,
            _ => 0,
        };
        Lease {
            holder: d.get_str("holder").ok().map(str::to_string),
            epoch: number("epoch"),
            renewed_at: d
                .get_datetime("renewedAt")
                .copied()
                .unwrap_or(DateTime::MIN),
            lease_ms: number("leaseMs"),
            released: d.get_bool("released").unwrap_or(false),
        }
    }

    /// Held now: not released and renewed less than `leaseMs` ago (by this clock).
    pub fn is_live(&self, now: DateTime) -> bool {
        !self.released
            && self
                .renewed_at
                .timestamp_millis()
                .saturating_add(self.lease_ms)
                > now.timestamp_millis()
    }

    /// The lease document, for reports.
    pub fn to_document(&self) -> Document {
        doc! {
            "holder": self.holder.clone().map_or(Bson::Null, Bson::String),
            "epoch": self.epoch,
            "renewedAt": self.renewed_at,
            "leaseMs": self.lease_ms,
            "released": self.released,
        }
    }
}

/// Where a group's leases are: `db.collection` on a deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseLocation {
    pub uri: String,
    pub db: String,
    pub collection: String,
}

impl LeaseLocation {
    fn leases(&self) -> SharedCollection {
        SharedCollection::new(self.uri.clone(), self.db.clone(), self.collection.clone())
    }
}

fn lease_error(at: &LeaseLocation, what: &str, e: &mongodb::error::Error) -> EngineError {
    prefixed(
        EngineError::from_driver(e),
        &format!("cannot {what} the lease in {}.{}: ", at.db, at.collection),
    )
}

/// The lease on `name`, if there is one.
pub async fn read_lease(at: &LeaseLocation, name: &str) -> Result<Option<Lease>, EngineError> {
    let leases = at.leases();
    let found = leases
        .get()
        .await?
        .find_one(doc! {"_id": name})
        .await
        .map_err(|e| lease_error(at, "read", &e))?;
    Ok(found.as_ref().map(Lease::from_document))
}

/// Raises the lease's epoch to at least `epoch`: the holder is fenced.
async fn fence_lease(at: &LeaseLocation, name: &str, epoch: i64) -> Result<(), EngineError> {
    let leases = at.leases();
    leases
        .get()
        .await?
        .update_one(doc! {"_id": name}, doc! {"$max": {"epoch": epoch}})
        .await
        .map_err(|e| lease_error(at, "fence", &e))?;
    Ok(())
}

/// Where a rewind moves a change stream's position.
#[derive(Debug, Clone, PartialEq)]
pub enum RewindTarget {
    /// Re-open with `startAtOperationTime` at this time: events from it on come again.
    Time(Timestamp),
    /// Re-open with `resumeAfter` this token.
    Token(Document),
}

/// What a rewind or reset is asked to do.
#[derive(Debug, Clone)]
pub struct MoveRequest {
    pub store: StoreLocation,
    pub name: String,
    /// The deployment whose oplog (and, by default, leases) to check when the store is not
    /// on one (a file store); a MongoDB store's own deployment otherwise.
    pub uri: Option<String>,
    /// Leases in another `db.collection` than the default.
    pub leases: Option<(String, String)>,
    /// Move a position under a live lease (fencing its holder), or rewind to a time whose
    /// oplog cannot be checked.
    pub force: bool,
    /// Check and describe the change, write nothing.
    pub dry_run: bool,
}

impl MoveRequest {
    fn deployment(&self) -> Option<&str> {
        self.store.uri().or(self.uri.as_deref())
    }

    fn lease_location(&self) -> Option<LeaseLocation> {
        let (db, collection) = self.leases.clone().unwrap_or_else(|| {
            (
                DEFAULT_LEASE_DB.to_string(),
                DEFAULT_LEASE_COLLECTION.to_string(),
            )
        });
        self.deployment().map(|uri| LeaseLocation {
            uri: uri.to_string(),
            db,
            collection,
        })
    }
}

/// What a rewind or reset did (or, dry, would do).
#[derive(Debug, Clone, PartialEq)]
pub struct PositionChange {
    pub before: Option<Document>,
    /// The record written; `None` for a reset (deleted).
    pub after: Option<Document>,
    /// The lease on the name, when there is one.
    pub lease: Option<Lease>,
    /// The epoch the position and lease were raised to (a forced move under a live lease).
    pub fenced_epoch: Option<i64>,
}

/// `error` with `what` (no credentials) before its message.
fn prefixed(mut error: EngineError, what: &str) -> EngineError {
    error.message = format!("{what}{}", error.message);
    error
}

fn refused(message: String) -> EngineError {
    EngineError::new(ErrorCode::InvalidOption, message)
}

fn iso(ts: Timestamp) -> String {
    let at = DateTime::from_millis(ts.time as i64 * 1000);
    at.try_to_rfc3339_string()
        .unwrap_or_else(|_| format!("{}s", ts.time))
}

/// The stored record of `name`; an error when there is none.
async fn stored(request: &MoveRequest) -> Result<Document, EngineError> {
    let found = list_positions(&request.store, Some(&request.name)).await?;
    found.into_iter().next().map(|p| p.record).ok_or_else(|| {
        refused(format!(
            "no stored position named \"{}\" in {}",
            request.name,
            request.store.describe()
        ))
    })
}

/// Refuses to move a position under a live lease unless forced; forced, the epoch the
/// position and the lease move to.
async fn check_lease(request: &MoveRequest) -> Result<(Option<Lease>, Option<i64>), EngineError> {
    let Some(at) = request.lease_location() else {
        return Ok((None, None));
    };
    let lease = read_lease(&at, &request.name).await?;
    let Some(live) = lease.as_ref().filter(|l| l.is_live(DateTime::now())) else {
        return Ok((lease, None));
    };
    if !request.force {
        return Err(refused(format!(
            "\"{}\" is held by a live lease (holder {}, epoch {}, renewed {}, {} ms): a \
             position is never moved under a live holder; stop the group first, or use \
             --force to fence the holder",
            request.name,
            live.holder.as_deref().unwrap_or("none"),
            live.epoch,
            live.renewed_at
                .try_to_rfc3339_string()
                .unwrap_or_else(|_| "?".into()),
            live.lease_ms
        )));
    }
    let epoch = live.epoch + 1;
    Ok((lease, Some(epoch)))
}

/// Refuses a time older than the oplog's oldest entry (those events are gone), and one the
/// oplog cannot be checked for unless forced.
async fn check_time(request: &MoveRequest, time: Timestamp) -> Result<(), EngineError> {
    let Some(uri) = request.deployment() else {
        return Err(refused(
            "rewinding to a time needs the deployment's connection string to check its oplog \
             (--uri or $MONGODB_URI)"
                .into(),
        ));
    };
    match oplog_window(uri).await? {
        OplogWindow::Known { oldest, .. }
            if (time.time, time.increment) < (oldest.time, oldest.increment) =>
        {
            Err(EngineError::new(
                ErrorCode::ChangeStreamHistoryLost,
                format!(
                    "the oplog no longer holds {}: its oldest entry is from {}; the events \
                     before that are gone (rewind to a later time)",
                    iso(time),
                    iso(oldest)
                ),
            ))
        }
        OplogWindow::Known { .. } => Ok(()),
        OplogWindow::Unknown { reason } if !request.force => Err(refused(format!(
            "cannot check that the oplog still holds {}: {reason}; --force rewinds anyway",
            iso(time)
        ))),
        OplogWindow::Unknown { .. } => Ok(()),
    }
}

/// Moves a change stream's stored position to a time or a token. The record keeps its
/// owner (name, namespace, fingerprint) and any other field; forced under a live lease, it
/// carries the new `epoch`.
pub async fn rewind(
    request: &MoveRequest,
    target: RewindTarget,
) -> Result<PositionChange, EngineError> {
    let before = stored(request).await?;
    let record = PositionRecord::from_document(&before, &request.store.describe())?;
    if record.owner.kind != ReaderKind::ChangeStream {
        return Err(refused(format!(
            "\"{}\" is a {}'s position (a key), not a change stream's: only change stream \
             positions are rewound",
            request.name,
            record.owner.kind.as_str()
        )));
    }
    let position = match target {
        RewindTarget::Time(time) => {
            check_time(request, time).await?;
            Position::StreamAt { cluster_time: time }
        }
        RewindTarget::Token(token) => {
            let token = RawDocumentBuf::from_document(&token)
                .map_err(|e| refused(format!("the token is not a document: {e}")))?;
            let cluster_time = keystring_token_time(&token);
            if let Some(time) = cluster_time.filter(|_| request.deployment().is_some()) {
                check_time(request, time).await?;
            }
            Position::Stream {
                token,
                cluster_time,
                start_after: false,
            }
        }
    };
    let (lease, fenced_epoch) = check_lease(request).await?;
    let mut after = before.clone();
    after.extend(
        PositionRecord {
            position,
            written_at: DateTime::now(),
            ..record
        }
        .to_document(),
    );
    if let Some(epoch) = fenced_epoch {
        after.insert("epoch", epoch);
    }
    if !request.dry_run {
        if let (Some(epoch), Some(at)) = (fenced_epoch, request.lease_location()) {
            fence_lease(&at, &request.name, epoch).await?;
        }
        request
            .store
            .store()
            .save(&request.name, after.clone())
            .await?;
    }
    Ok(PositionChange {
        before: Some(before),
        after: Some(after),
        lease,
        fenced_epoch,
    })
}

/// Deletes a stored position: the consumer starts afresh (from "now", or its start
/// option). Forced under a live lease, the lease's epoch is raised and the record keeps only
/// that epoch (a record without a position): the holder is fenced, and cannot write a
/// position back into a deleted record.
pub async fn reset(request: &MoveRequest) -> Result<PositionChange, EngineError> {
    let before = stored(request).await?;
    let (lease, fenced_epoch) = check_lease(request).await?;
    if !request.dry_run {
        if let (Some(epoch), Some(at)) = (fenced_epoch, request.lease_location()) {
            fence_lease(&at, &request.name, epoch).await?;
        }
        delete(&request.store, &request.name, fenced_epoch).await?;
    }
    Ok(PositionChange {
        before: Some(before),
        after: None,
        lease,
        fenced_epoch,
    })
}

/// Deletes `name`'s record; with `fence`, leaves `{ epoch: fence }` in its place.
async fn delete(store: &StoreLocation, name: &str, fence: Option<i64>) -> Result<(), EngineError> {
    match store {
        StoreLocation::File { path } => std::fs::remove_file(path).map_err(|e| {
            EngineError::new(
                ErrorCode::TokenStore,
                format!("cannot delete {}: {e}", store.describe()),
            )
        }),
        StoreLocation::MongoDb {
            uri,
            db,
            collection,
        } => {
            let shared = SharedCollection::new(uri.clone(), db.clone(), collection.clone());
            let records = shared.get().await?;
            let deleted = match fence {
                None => records.delete_one(doc! {"_id": name}).await.map(|_| ()),
                Some(epoch) => records
                    .replace_one(doc! {"_id": name}, doc! {"_id": name, EPOCH_FIELD: epoch})
                    .await
                    .map(|_| ()),
            };
            deleted.map_err(|e| {
                prefixed(
                    EngineError::from_driver(&e),
                    &format!("cannot delete from {}: ", store.describe()),
                )
            })?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(renewed_ms_ago: i64, lease_ms: i64, released: bool) -> Lease {
        Lease {
            holder: Some("m1".into()),
            epoch: 3,
            renewed_at: DateTime::from_millis(10_000 - renewed_ms_ago),
            lease_ms,
            released,
        }
    }

    #[test]
    fn a_lease_is_live_while_renewed_within_its_time_and_not_released() {
        let now = DateTime::from_millis(10_000);
        assert!(lease(100, 1000, false).is_live(now));
        assert!(!lease(1000, 1000, false).is_live(now));
        assert!(!lease(100, 1000, true).is_live(now));
    }

    #[test]
    fn lease_documents_read_any_number_type() {
        let d = doc! {"_id": "n", "holder": "a", "epoch": 7_i32, "renewedAt": DateTime::from_millis(5), "leaseMs": 2000.0, "released": false};
        let l = Lease::from_document(&d);
        assert_eq!(
            (l.epoch, l.lease_ms, l.holder.as_deref()),
            (7, 2000, Some("a"))
        );
        let none = Lease::from_document(&doc! {"holder": Bson::Null});
        assert_eq!(none.holder, None);
    }

    #[tokio::test]
    async fn a_file_store_lists_its_one_record_by_its_name() {
        let dir = std::env::temp_dir().join(format!("rcs-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.json");
        let store = StoreLocation::File {
            path: path.display().to_string(),
        };
        assert_eq!(list_positions(&store, None).await.unwrap(), vec![]);
        std::fs::write(&path, r#"{"version":{"$numberInt":"1"},"name":"a"}"#).unwrap();
        let all = list_positions(&store, None).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name, "a");
        assert_eq!(list_positions(&store, Some("b")).await.unwrap(), vec![]);
        let request = MoveRequest {
            store: store.clone(),
            name: "b".into(),
            uri: None,
            leases: None,
            force: false,
            dry_run: true,
        };
        let e = reset(&request).await.unwrap_err();
        assert!(
            e.message.contains("no stored position named \"b\""),
            "{}",
            e.message
        );
        let e = check_time(
            &request,
            Timestamp {
                time: 1,
                increment: 0,
            },
        )
        .await
        .unwrap_err();
        assert!(e.message.contains("--uri"), "{}", e.message);
    }
}
