//! The lease collection: one document per group (the reader's name),
//! `{ _id, holder, epoch, renewals, acquiredAt, renewedAt, leaseMs, released }`. Every
//! change is one conditional update, so two members never both win: a standby takes a
//! lease only in the exact state (epoch, renewals) it watched lapse.
//!
//! Expiry is judged by the standbys on their own monotonic clocks ("this state has not
//! changed for a lease"), never by comparing wall clocks across machines.

use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::ReturnDocument;

use crate::engine::client_pool::SharedCollection;
use crate::engine::errors::{is_duplicate_key, EngineError, ErrorCode};

/// What a standby sees of the lease.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LeaseState {
    pub holder: Option<String>,
    pub epoch: u64,
    pub renewals: u64,
    pub released: bool,
    pub lease_ms: u64,
    pub acquired_at: Option<DateTime>,
}

impl LeaseState {
    fn from_document(d: &Document) -> Self {
        let whole = |f: &str| match d.get(f) {
            Some(mongodb::bson::Bson::Int64(n)) => (*n).max(0) as u64,
            Some(mongodb::bson::Bson::Int32(n)) => (*n).max(0) as u64,
            Some(mongodb::bson::Bson::Double(n)) => n.max(0.0) as u64,
            _ => 0,
        };
        LeaseState {
            holder: d.get_str("holder").ok().map(str::to_string),
            epoch: whole("epoch"),
            renewals: whole("renewals"),
            released: d.get_bool("released").unwrap_or(false),
            lease_ms: whole("leaseMs"),
            acquired_at: d.get_datetime("acquiredAt").ok().copied(),
        }
    }
}

pub(crate) struct LeaseStore {
    leases: SharedCollection,
}

fn int(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

impl LeaseStore {
    pub(crate) fn new(uri: String, db: String, collection: String) -> Self {
        LeaseStore {
            leases: SharedCollection::new(uri, db, collection),
        }
    }

    async fn leases(&self) -> Result<mongodb::Collection<Document>, EngineError> {
        self.leases.get().await
    }

    fn error(&self, what: &str, e: &mongodb::error::Error) -> EngineError {
        let cause = EngineError::from_driver(e);
        EngineError {
            code: ErrorCode::LeaseStore,
            message: format!(
                "cannot {what} the lease in mongodb {}: {}",
                self.leases.namespace(),
                cause.message
            ),
            resumable: true,
            ..cause
        }
    }

    pub(crate) async fn read(&self, name: &str) -> Result<Option<LeaseState>, EngineError> {
        let found = self
            .leases()
            .await?
            .find_one(doc! {"_id": name})
            .await
            .map_err(|e| self.error("read", &e))?;
        Ok(found.as_ref().map(LeaseState::from_document))
    }

    /// The first lease of a group (epoch 1); `None` when another member created it first.
    pub(crate) async fn create(
        &self,
        name: &str,
        member: &str,
        lease_ms: u64,
    ) -> Result<Option<u64>, EngineError> {
        let now = DateTime::now();
        let inserted = self
            .leases()
            .await?
            .insert_one(doc! {
                "_id": name, "holder": member, "epoch": 1i64, "renewals": 0i64,
                "acquiredAt": now, "renewedAt": now, "leaseMs": int(lease_ms), "released": false,
            })
            .await;
        match inserted {
            Ok(_) => Ok(Some(1)),
            Err(e) if is_duplicate_key(&e) => Ok(None),
            Err(e) => Err(self.error("create", &e)),
        }
    }

    /// Takes the lease if it is still in the state `seen` (lapsed or released): the new
    /// epoch, or `None` when it changed meanwhile (renewed, or taken by another standby).
    pub(crate) async fn take(
        &self,
        name: &str,
        member: &str,
        seen: &LeaseState,
        lease_ms: u64,
    ) -> Result<Option<u64>, EngineError> {
        let now = DateTime::now();
        let taken = self
            .leases()
            .await?
            .find_one_and_update(
                doc! {"_id": name, "epoch": int(seen.epoch), "renewals": int(seen.renewals)},
                doc! {
                    "$set": {"holder": member, "renewals": 0i64, "acquiredAt": now,
                             "renewedAt": now, "leaseMs": int(lease_ms), "released": false},
                    "$inc": {"epoch": 1i64},
                },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| self.error("take", &e))?;
        Ok(taken.map(|d| LeaseState::from_document(&d).epoch))
    }

    /// Renews the lease held at `epoch`; false when it is no longer this member's.
    pub(crate) async fn renew(
        &self,
        name: &str,
        member: &str,
        epoch: u64,
    ) -> Result<bool, EngineError> {
        let update = doc! {"$inc": {"renewals": 1i64}, "$set": {"renewedAt": DateTime::now()}};
        self.update_held(name, member, epoch, update, "renew").await
    }

    /// Moves the lease held at `epoch` to epoch `to` (above what a token store holds, e.g.
    /// after the lease collection was reset); false when it is no longer this member's.
    pub(crate) async fn raise(
        &self,
        name: &str,
        member: &str,
        epoch: u64,
        to: u64,
    ) -> Result<bool, EngineError> {
        let update = doc! {"$set": {"epoch": int(to), "renewedAt": DateTime::now()}};
        self.update_held(name, member, epoch, update, "raise").await
    }

    /// Gives the lease up (a graceful close): standbys take it at once.
    pub(crate) async fn release(
        &self,
        name: &str,
        member: &str,
        epoch: u64,
    ) -> Result<bool, EngineError> {
        let update = doc! {"$set": {"released": true, "renewedAt": DateTime::now()}};
        self.update_held(name, member, epoch, update, "release")
            .await
    }

    /// Applies `update` to the lease only while `member` holds it at `epoch`; false when it
    /// does not (any more).
    async fn update_held(
        &self,
        name: &str,
        member: &str,
        epoch: u64,
        update: Document,
        what: &str,
    ) -> Result<bool, EngineError> {
        let updated = self
            .leases()
            .await?
            .update_one(
                doc! {"_id": name, "epoch": int(epoch), "holder": member},
                update,
            )
            .await
            .map_err(|e| self.error(what, &e))?;
        Ok(updated.matched_count == 1)
    }

    /// A partitioned group's member shows it is alive: its own document in the lease
    /// collection (`_id` `member_id`, `{ group, member, beats }`), its `beats` counting up.
    pub(crate) async fn beat(
        &self,
        member_id: &str,
        group: &str,
        member: &str,
    ) -> Result<(), EngineError> {
        self.leases()
            .await?
            .update_one(
                doc! {"_id": member_id},
                doc! {
                    "$inc": {"beats": 1i64},
                    "$set": {"group": group, "member": member, "kind": "member",
                             "renewedAt": DateTime::now()},
                },
            )
            .upsert(true)
            .await
            .map_err(|e| self.error("beat", &e))?;
        Ok(())
    }

    /// The member documents of `group`: (member, beats).
    pub(crate) async fn members(&self, group: &str) -> Result<Vec<(String, u64)>, EngineError> {
        use futures_util::TryStreamExt;
        let found: Vec<Document> = self
            .leases()
            .await?
            .find(doc! {"group": group, "kind": "member"})
            .await
            .map_err(|e| self.error("read the members of", &e))?
            .try_collect()
            .await
            .map_err(|e| self.error("read the members of", &e))?;
        Ok(found
            .iter()
            .filter_map(|d| {
                let member = d.get_str("member").ok()?.to_string();
                let beats = d.get("beats").and_then(crate::engine::options::as_f64)?;
                Some((member, beats.max(0.0) as u64))
            })
            .collect())
    }

    /// Removes a member document that has not changed (its `beats` still `beats`): a member
    /// that died long ago, so the collection does not keep every process that ever ran.
    pub(crate) async fn forget(&self, member_id: &str, beats: u64) -> Result<(), EngineError> {
        self.leases()
            .await?
            .delete_one(doc! {"_id": member_id, "kind": "member", "beats": int(beats)})
            .await
            .map_err(|e| self.error("forget a member of", &e))?;
        Ok(())
    }

    /// A member leaves its partitioned group (a graceful close): the others rebalance at once.
    pub(crate) async fn leave(&self, member_id: &str) -> Result<(), EngineError> {
        self.leases()
            .await?
            .delete_one(doc! {"_id": member_id})
            .await
            .map_err(|e| self.error("leave", &e))?;
        Ok(())
    }
}
