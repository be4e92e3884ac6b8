//! The consumer's side of checkpointing, owned here and nowhere else: the run loop numbers
//! the batches it hands out and (for a named reader) keeps them until they are committed;
//! the consumer says only "processed the first n documents of batch seq", and this maps
//! that to a position (token and time, or key) and a count for the checkpointer. Marks tell
//! the consumer, by document number, when to report and how far it may go.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::item::Batch;
use super::partitioned::{PartMeta, PartitionSet};
use super::source::{ReadBatch, Source};
use crate::engine::durable::checkpoint::Checkpointer;
use crate::engine::errors::{EngineError, ErrorCode};

/// Where the consumer stands against the checkpoint policy, by document number (see
/// `Batch::ordinal`). Marks only ever move forward, so an older copy is a stricter one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    /// Documents numbered below this may be handed out: beyond it, more processed
    /// documents would be unsaved than `checkpoint.maxUnsavedEvents` allows.
    pub limit: u64,
    /// Report (commit) once the documents below this are processed: the policy's
    /// `everyEvents` are reached.
    pub report_at: u64,
}

impl Marks {
    const UNBOUNDED: Marks = Marks {
        limit: u64::MAX,
        report_at: u64::MAX,
    };
}

/// A batch handed out and not yet committed past.
struct Kept {
    seq: u64,
    ordinal: u64,
    batch: ReadBatch,
    /// A partitioned member's: the events' partitions and positions, and how many of them
    /// were committed already (and whether the batch's end was).
    parts: Option<(PartMeta, usize, bool)>,
}

#[derive(Default)]
struct Numbering {
    next_seq: u64,
    next_ordinal: u64,
    /// Documents numbered below this are committed.
    committed: u64,
    kept: VecDeque<Kept>,
    /// Batches numbered below this belong to a group member's earlier tenure: never
    /// handed out, never committed.
    stale_below: u64,
}

pub(crate) struct Commits<S: Source> {
    spec: Arc<S::Spec>,
    /// Present for a named reader.
    checkpointer: Option<Arc<Checkpointer>>,
    /// A partitioned group member's partitions (their own checkpointers).
    parts: Option<Arc<PartitionSet>>,
    numbering: Mutex<Numbering>,
}

impl<S: Source> Commits<S> {
    pub(crate) fn new(
        spec: Arc<S::Spec>,
        checkpointer: Option<Arc<Checkpointer>>,
        parts: Option<Arc<PartitionSet>>,
    ) -> Self {
        Commits {
            spec,
            checkpointer,
            parts,
            numbering: Mutex::new(Numbering::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Numbering> {
        self.numbering.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers a batch about to be handed out, keeping a copy for commits (named readers).
    pub(crate) fn number(&self, read: ReadBatch, meta: Option<PartMeta>) -> Batch {
        let mut numbering = self.lock();
        let seq = numbering.next_seq;
        let ordinal = numbering.next_ordinal;
        numbering.next_seq += 1;
        numbering.next_ordinal += read.count as u64;
        let partitions = meta.as_ref().map(PartitionSet::partitions_of);
        if self.checkpointer.is_some() || self.parts.is_some() {
            let kept = ReadBatch {
                docs: read.docs.clone(),
                count: read.count,
                end_token: read.end_token.clone(),
                position_time: read.position_time,
            };
            numbering.kept.push_back(Kept {
                seq,
                ordinal,
                batch: kept,
                parts: meta.map(|m| (m, 0, false)),
            });
        }
        Batch {
            seq,
            ordinal,
            docs: read.docs,
            count: read.count,
            end_token: read.end_token,
            partitions,
        }
    }

    /// How many batches were numbered (handed out or about to be).
    pub(crate) fn batches_numbered(&self) -> u64 {
        self.lock().next_seq
    }

    /// The consumer processed every document handed out before batch `seq` and the first
    /// `n` of it (`n` = its count: the whole batch, and for a change stream the position
    /// after it, even with no document). Returns the new marks. No-op without a store.
    pub(crate) fn commit(&self, seq: u64, n: usize) -> Result<Marks, EngineError> {
        if let Some(parts) = &self.parts {
            return self.commit_partitioned(parts, seq, n);
        }
        let Some(ck) = &self.checkpointer else {
            return Ok(Marks::UNBOUNDED);
        };
        let mut numbering = self.lock();
        let Some(index) = numbering.kept.iter().position(|k| k.seq == seq) else {
            if seq < numbering.next_seq {
                // Committed past already: a position never moves backwards.
                return Ok(self.marks_of(&numbering, ck));
            }
            return Err(EngineError::new(
                ErrorCode::ClientError,
                format!("commit: batch {seq} was not handed out"),
            ));
        };
        let kept = &numbering.kept[index];
        if n > kept.batch.count {
            return Err(EngineError::new(
                ErrorCode::ClientError,
                format!(
                    "commit: batch {seq} has {} documents, not {n}",
                    kept.batch.count
                ),
            ));
        }
        let through = kept.ordinal + n as u64;
        if through >= numbering.committed {
            if let Some(position) = S::position_at(&self.spec, &kept.batch, n)? {
                ck.commit(position, through - numbering.committed);
                numbering.committed = through;
            }
        }
        // What came before this batch is committed; so is this batch once whole.
        let done = if n == numbering.kept[index].batch.count {
            index + 1
        } else {
            index
        };
        numbering.kept.drain(..done);
        Ok(self.marks_of(&numbering, ck))
    }

    /// `commit` of a partitioned member: each partition's position moves by its own events,
    /// and by a whole batch's end for the partitions caught up through it.
    fn commit_partitioned(
        &self,
        parts: &PartitionSet,
        seq: u64,
        n: usize,
    ) -> Result<Marks, EngineError> {
        let mut numbering = self.lock();
        let Some(index) = numbering.kept.iter().position(|k| k.seq == seq) else {
            if seq < numbering.next_seq {
                return Ok(Self::partitioned_marks(&numbering, parts));
            }
            return Err(EngineError::new(
                ErrorCode::ClientError,
                format!("commit: batch {seq} was not handed out"),
            ));
        };
        let count = numbering.kept[index].batch.count;
        if n > count {
            return Err(EngineError::new(
                ErrorCode::ClientError,
                format!("commit: batch {seq} has {count} documents, not {n}"),
            ));
        }
        for i in 0..=index {
            let kept = &mut numbering.kept[i];
            let upto = if i == index { n } else { kept.batch.count };
            let whole = upto == kept.batch.count;
            if let Some((meta, applied, end_applied)) = &mut kept.parts {
                if upto > *applied {
                    parts.commit_events(PartitionSet::events_of(meta, *applied, upto));
                    *applied = upto.min(PartitionSet::meta_len(meta));
                }
                if whole && !*end_applied {
                    parts.commit_end(meta);
                    *end_applied = true;
                }
            }
        }
        let through = numbering.kept[index].ordinal + n as u64;
        numbering.committed = numbering.committed.max(through);
        let done = if n == count { index + 1 } else { index };
        numbering.kept.drain(..done);
        Ok(Self::partitioned_marks(&numbering, parts))
    }

    fn partitioned_marks(numbering: &Numbering, parts: &PartitionSet) -> Marks {
        Marks {
            limit: numbering.committed.saturating_add(parts.room()),
            report_at: numbering.committed.saturating_add(parts.every_events()),
        }
    }

    /// A partitioned member dropped what it read and did not commit (a partition was lost
    /// or handed over): those batches are never handed out or committed; the partitions
    /// still held keep their committed positions (`PartitionSet::rewind`). Returns under
    /// the one lock, so no commit of what was dropped lands after it.
    pub(crate) fn drop_uncommitted(&self, then: impl FnOnce()) {
        let mut numbering = self.lock();
        numbering.kept.clear();
        numbering.committed = numbering.next_ordinal;
        numbering.stale_below = numbering.next_seq;
        then();
    }

    /// A group member's tenure ended: what was handed out and not committed is forgotten
    /// (its successor reads it again), with what the checkpointer held unsaved. Under the
    /// one lock, so no commit of that tenure lands after it.
    pub(crate) fn end_tenure(&self) {
        let mut numbering = self.lock();
        numbering.kept.clear();
        numbering.committed = numbering.next_ordinal;
        numbering.stale_below = numbering.next_seq;
        if let Some(ck) = &self.checkpointer {
            ck.end_tenure();
        }
    }

    /// Whether batch `seq` belongs to an ended tenure.
    pub(crate) fn is_stale(&self, seq: u64) -> bool {
        seq < self.lock().stale_below
    }

    /// The current marks.
    pub(crate) fn marks(&self) -> Marks {
        if let Some(parts) = &self.parts {
            return Self::partitioned_marks(&self.lock(), parts);
        }
        match &self.checkpointer {
            None => Marks::UNBOUNDED,
            Some(ck) => self.marks_of(&self.lock(), ck),
        }
    }

    fn marks_of(&self, numbering: &Numbering, ck: &Checkpointer) -> Marks {
        Marks {
            limit: numbering.committed.saturating_add(ck.room()),
            report_at: numbering.committed.saturating_add(ck.policy().every_events),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::durable::store::{MemoryStore, TokenStore};
    use crate::engine::reader::source::ReaderSpec;
    use crate::engine::stream::spec::test_spec;
    use crate::engine::stream::StreamSource;
    use mongodb::bson::{doc, RawDocumentBuf, Timestamp};

    fn raw(d: mongodb::bson::Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    /// `ids` as change events back to back, the batch's end token `end`.
    fn batch(ids: &[&str], end: &str, time: u32) -> ReadBatch {
        let mut docs = Vec::new();
        for id in ids {
            let event = doc! {"_id": {"_data": *id}, "operationType": "insert",
            "clusterTime": Timestamp { time, increment: 1 }};
            docs.extend(raw(event).into_bytes());
        }
        ReadBatch {
            docs,
            count: ids.len(),
            end_token: Some(raw(doc! {"_data": end})),
            position_time: Some(Timestamp { time, increment: 9 }),
        }
    }

    async fn stored_token(name: &str) -> mongodb::bson::Document {
        let record = MemoryStore.load(name).await.unwrap().unwrap();
        record.get_document("token").unwrap().clone()
    }

    #[tokio::test]
    async fn a_commit_names_a_batch_and_the_engine_counts_and_positions() {
        let name = format!("commits-{}", std::process::id());
        let spec = Arc::new(test_spec(doc! {"name": name.as_str(),
        "checkpoint": {"everyEvents": 2, "maxUnsavedEvents": 5}}));
        let d = spec.common.durability.clone().unwrap();
        let ck = Arc::new(
            d.checkpointer(spec.owner(&d.name), &spec.common.uri, None)
                .unwrap(),
        );
        let commits = Commits::<StreamSource>::new(spec, Some(ck.clone()), None);
        let first = commits.number(batch(&["a1", "a2", "a3"], "pbrt-a", 10), None);
        let quiet = commits.number(batch(&[], "pbrt-q", 11), None);
        let second = commits.number(batch(&["b1", "b2"], "pbrt-b", 12), None);
        assert_eq!((first.seq, first.ordinal), (0, 0));
        assert_eq!((quiet.seq, quiet.ordinal), (1, 3));
        assert_eq!((second.seq, second.ordinal), (2, 3));
        assert_eq!(
            commits.marks(),
            Marks {
                limit: 5,
                report_at: 2
            }
        );

        // Two events of the first batch: the position is the second event's _id.
        let marks = commits.commit(0, 2).unwrap();
        assert_eq!(ck.unsaved_events(), 2);
        assert_eq!(
            marks,
            Marks {
                limit: 5,
                report_at: 4
            },
            "the limit stays: committing uses the room it grants"
        );
        ck.flush().await.unwrap();
        assert_eq!(stored_token(&name).await, doc! {"_data": "a2"});
        assert_eq!(commits.marks().limit, 7, "a save makes room");

        // The quiet batch: everything before it (the third event) and its own token.
        commits.commit(1, 0).unwrap();
        assert_eq!(ck.unsaved_events(), 1);
        ck.flush().await.unwrap();
        assert_eq!(stored_token(&name).await, doc! {"_data": "pbrt-q"});

        // A whole batch ends at its end token; an older commit never moves it back.
        commits.commit(2, 2).unwrap();
        assert_eq!(ck.unsaved_events(), 2);
        commits.commit(0, 3).unwrap();
        assert_eq!(ck.unsaved_events(), 2);
        ck.flush().await.unwrap();
        assert_eq!(stored_token(&name).await, doc! {"_data": "pbrt-b"});

        assert!(commits.commit(7, 0).is_err(), "a batch never handed out");
        let third = commits.number(batch(&["c1"], "pbrt-c", 13), None);
        assert!(commits.commit(third.seq, 2).is_err(), "more than it holds");
    }
}
