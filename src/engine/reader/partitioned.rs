//! A partitioned group member's reading (`group: { partitions: P }`): ONE change stream
//! for all the partitions it holds, opened at the earliest of their positions. Each reply
//! is filtered here before it is numbered: an event goes out only when its partition
//! (`group::partitions::partition_of` its `documentKey`) is held and the event comes after
//! that partition's position (the position it was acquired at, or after a reset the last
//! one committed): a later cluster time, or past the event whose `_id` is the stored token.
//! Commits move each partition's position separately (its own events; a batch's end token
//! for the partitions that were caught up through it), each in its own fenced checkpointer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mongodb::bson::{RawDocument, RawDocumentBuf, Timestamp};

use super::source::ReadBatch;
use crate::engine::durable::checkpoint::Checkpointer;
use crate::engine::durable::position::Position;
use crate::engine::errors::{EngineError, ErrorCode};
use crate::engine::group::partitions::{partition_of, Partitions};

/// A partition's position as the filter compares it.
#[derive(Debug, Clone)]
struct After {
    token: RawDocumentBuf,
    time: Option<Timestamp>,
}

impl After {
    fn of(position: &Position) -> Option<After> {
        match position {
            Position::Stream {
                token,
                cluster_time,
                ..
            } => Some(After {
                token: token.clone(),
                time: *cluster_time,
            }),
            // Opens at `cluster_time` inclusive: what comes after is at that time or later.
            Position::StreamAt { cluster_time } => Some(After {
                token: RawDocumentBuf::new(),
                time: Some(just_before(*cluster_time)),
            }),
            // Never a partition's: a partitioned stream refuses a copy.
            Position::Cursor { .. } | Position::Snapshot { .. } => None,
        }
    }

    /// Whether an event (its `_id` and cluster time) comes after this position.
    fn passes(&self, time: Option<Timestamp>) -> bool {
        match (self.time, time) {
            (Some(at), Some(t)) => t > at,
            // Without times, only the exact token ends the skip (`passed` clears it).
            _ => false,
        }
    }

    /// Whether an event at (`token`, `time`) is this position or past it: the filter is
    /// done (later events pass).
    fn reached(&self, token: &[u8], time: Option<Timestamp>) -> bool {
        self.token.as_bytes() == token || self.passes(time)
    }
}

/// The cluster time right before `t`.
fn just_before(t: Timestamp) -> Timestamp {
    match t.increment {
        0 => Timestamp {
            time: t.time.saturating_sub(1),
            increment: u32::MAX,
        },
        i => Timestamp {
            time: t.time,
            increment: i - 1,
        },
    }
}

/// The position of an `After` (for a re-open or a commit).
fn position_of(a: &After) -> Position {
    Position::Stream {
        token: a.token.clone(),
        cluster_time: a.time,
        start_after: false,
    }
}

/// The earlier of two positions, or one at or before both: positions of the same cluster time
/// cannot be ordered by their (opaque) tokens, so their time itself (startAtOperationTime,
/// inclusive) is used, and every filter skips by token up to where it was.
fn first_of(a: &Position, b: &Position) -> Position {
    let (x, y) = (After::of(a), After::of(b));
    match (
        x.as_ref().and_then(|x| x.time),
        y.as_ref().and_then(|y| y.time),
    ) {
        (Some(tx), Some(ty)) if tx < ty => a.clone(),
        (Some(tx), Some(ty)) if ty < tx => b.clone(),
        (Some(t), Some(_)) => {
            let same =
                matches!((&x, &y), (Some(x), Some(y)) if x.token.as_bytes() == y.token.as_bytes());
            if same {
                a.clone()
            } else {
                Position::StreamAt { cluster_time: t }
            }
        }
        (None, _) => a.clone(),
        (_, None) => b.clone(),
    }
}

/// One event of a handed-out batch: its partition and the position after it.
#[derive(Debug, Clone)]
pub(crate) struct EventMeta {
    partition: u32,
    token: RawDocumentBuf,
    time: Option<Timestamp>,
}

/// What a commit needs of a filtered batch.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartMeta {
    events: Vec<EventMeta>,
    /// Partitions held and caught up through the batch's end: their position may move to it.
    covers: Vec<u32>,
    end: Option<After>,
}

#[derive(Default)]
struct Inner {
    /// The partitions served now, with their epochs.
    held: BTreeMap<u32, u64>,
    /// Per partition: skip its events up to here (None: hand them out).
    filters: Vec<Option<After>>,
    /// Per partition: the last position committed (or acquired at).
    committed: Vec<Option<Position>>,
    /// Where the stream stands: the end of the last reply filtered.
    stream_at: Option<After>,
    /// The latest cluster time of an event the stream returned (or of the position it was
    /// opened at). A batch's end is timed by it, not by the reply's `operationTime`: every
    /// event after that end comes later than it, while a server's "now" may be later than
    /// events still to come.
    last_event_time: Option<Timestamp>,
    /// The last event the stream returned (its `_id` and time): where the stream stands
    /// after a batch with events. An event's `_id`, unlike a postBatchResumeToken, is
    /// returned again when the stream re-reads from earlier, so a filter set to it always
    /// finds its end, even among events of one cluster time (one insertMany).
    last_event: Option<After>,
}

pub(crate) struct PartitionSet {
    pub(crate) coord: Arc<Partitions>,
    /// One fenced checkpointer per partition (`<name>#p<i>`).
    pub(crate) checkpointers: Vec<Arc<Checkpointer>>,
    inner: Mutex<Inner>,
}

fn malformed() -> EngineError {
    EngineError::new(
        ErrorCode::ClientError,
        "a partitioned group member read a change event without an _id",
    )
}

impl PartitionSet {
    pub(crate) fn new(coord: Arc<Partitions>, checkpointers: Vec<Arc<Checkpointer>>) -> Self {
        let count = coord.count() as usize;
        PartitionSet {
            coord,
            checkpointers,
            inner: Mutex::new(Inner {
                filters: vec![None; count],
                committed: vec![None; count],
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn checkpointer(&self, partition: u32) -> &Arc<Checkpointer> {
        &self.checkpointers[partition as usize]
    }

    /// The partitions served now.
    pub(crate) fn held(&self) -> Vec<(u32, u64)> {
        self.lock().held.iter().map(|(p, e)| (*p, *e)).collect()
    }

    pub(crate) fn holds(&self, partition: u32, epoch: u64) -> bool {
        self.lock().held.get(&partition) == Some(&epoch)
    }

    /// Whether the stream has read anything yet (it has a position).
    pub(crate) fn stream_position(&self) -> Option<Position> {
        self.lock().stream_at.as_ref().map(position_of)
    }

    /// Starts serving `partition` (held at `epoch`) from `position` (None: nothing stored).
    /// Returns where the stream must re-open, if that is earlier than where it stands:
    /// `Some(None)`: from the reader's own start (nothing stored and nothing read yet of
    /// this partition). Every other partition keeps skipping what it already had.
    pub(crate) fn gain(
        &self,
        partition: u32,
        epoch: u64,
        position: Option<Position>,
        has_start: bool,
    ) -> Option<Option<Position>> {
        let mut inner = self.lock();
        let p = partition as usize;
        inner.held.insert(partition, epoch);
        let stream_at = inner.stream_at.clone();
        let reopen = match (&position, &stream_at) {
            // Not read anything yet: the stream opens at the earliest when it does.
            (_, None) => None,
            (Some(pos), Some(at)) => {
                let here = position_of(at);
                let from = first_of(pos, &here);
                // Unless the stream stands at or before it already.
                (from != here).then_some(Some(from))
            }
            (None, Some(_)) => has_start.then_some(None),
        };
        if reopen.is_some() {
            // Re-reading: the others skip what they passed already.
            for q in inner.held.keys().copied().collect::<Vec<_>>() {
                if q != partition && inner.filters[q as usize].is_none() {
                    inner.filters[q as usize] = stream_at.clone();
                }
            }
        }
        let start = match (&position, &reopen) {
            (Some(pos), _) => Some(pos.clone()),
            // Nothing stored, read from where the stream stands: that is its position.
            (None, None) => stream_at.as_ref().map(position_of),
            (None, Some(_)) => None,
        };
        inner.filters[p] = position.as_ref().and_then(After::of);
        inner.committed[p] = start.clone();
        drop(inner);
        if let (None, Some(start)) = (&position, start) {
            // Stored soon, so a successor never starts later than this.
            self.checkpointer(partition).commit(start, 0);
        }
        reopen
    }

    /// Stops serving `partition`.
    pub(crate) fn drop_partition(&self, partition: u32) {
        let mut inner = self.lock();
        inner.held.remove(&partition);
        inner.filters[partition as usize] = None;
        inner.committed[partition as usize] = None;
    }

    /// What was read and not committed was dropped (a partition was lost or handed over), or
    /// nothing was read yet: every partition held goes back to its committed position.
    /// Returns where the stream must (re-)open: the earliest of them (`Some(None)`: the
    /// reader's own start, for a partition with nothing committed; `None`: none held).
    pub(crate) fn rewind(&self) -> Option<Option<Position>> {
        let mut inner = self.lock();
        let held: Vec<u32> = inner.held.keys().copied().collect();
        let mut earliest: Option<Position> = None;
        let mut from_start = false;
        for q in held {
            let committed = inner.committed[q as usize].clone();
            inner.filters[q as usize] = committed.as_ref().and_then(After::of);
            match committed {
                None => from_start = true,
                Some(pos) => {
                    earliest = Some(match &earliest {
                        None => pos,
                        Some(e) => first_of(e, &pos),
                    });
                }
            }
        }
        if from_start {
            inner.last_event_time = None;
            return Some(None);
        }
        let earliest = earliest?;
        Self::opening_at(&mut inner, &earliest);
        Some(Some(earliest))
    }

    /// The stream re-opens right after `position`: a partition positioned exactly there
    /// skips nothing (that event is not returned again to match its token), and later events
    /// come at or after its time.
    fn opening_at(inner: &mut Inner, position: &Position) {
        let Some(at) = After::of(position) else {
            return;
        };
        for f in inner.filters.iter_mut() {
            // A position without a time (stored before its holder saw any event) can only be
            // matched by its token, which a stream opened elsewhere may never return: that
            // partition repeats from here instead (at-least-once, in order).
            if f.as_ref()
                .is_some_and(|a| a.token.as_bytes() == at.token.as_bytes() || a.time.is_none())
            {
                *f = None;
            }
        }
        inner.last_event_time = at.time;
    }

    /// The stream re-opens at `position` (the earliest needed) after a gain.
    pub(crate) fn reopening_at(&self, position: Option<&Position>) {
        let mut inner = self.lock();
        match position {
            Some(position) => Self::opening_at(&mut inner, position),
            None => {
                for f in inner.filters.iter_mut() {
                    if f.as_ref().is_some_and(|a| a.time.is_none()) {
                        *f = None;
                    }
                }
                inner.last_event_time = None;
            }
        }
    }

    /// The earlier of two re-open points (`None`: the reader's own start, earliest of all).
    pub(crate) fn earlier(a: Option<Position>, b: Option<Position>) -> Option<Position> {
        match (a, b) {
            (Some(a), Some(b)) => Some(first_of(&a, &b)),
            _ => None,
        }
    }

    /// Keeps the events of the partitions served, each after its partition's position.
    pub(crate) fn filter(&self, batch: ReadBatch) -> Result<(ReadBatch, PartMeta), EngineError> {
        let count = self.coord.count();
        let mut inner = self.lock();
        let mut docs = Vec::with_capacity(batch.docs.len());
        let mut meta = PartMeta::default();
        let mut offset = 0;
        let read_events = !batch.docs.is_empty();
        while offset + 4 <= batch.docs.len() {
            let len = i32::from_le_bytes([
                batch.docs[offset],
                batch.docs[offset + 1],
                batch.docs[offset + 2],
                batch.docs[offset + 3],
            ]) as usize;
            let Some(bytes) = batch.docs.get(offset..offset + len) else {
                return Err(malformed());
            };
            offset += len;
            let event = RawDocument::from_bytes(bytes).map_err(|_| malformed())?;
            let token = event.get_document("_id").map_err(|_| malformed())?;
            let time = event.get_timestamp("clusterTime").ok();
            if let Some(t) = time {
                inner.last_event_time = Some(inner.last_event_time.map_or(t, |l| l.max(t)));
            }
            let key = event.get_document("documentKey").ok().map(|k| k.as_bytes());
            let partition = partition_of(key, count);
            let p = partition as usize;
            let deliver = inner.held.contains_key(&partition)
                && inner.filters[p].as_ref().is_none_or(|f| f.passes(time));
            for f in inner.filters.iter_mut() {
                if f.as_ref()
                    .is_some_and(|a| a.reached(token.as_bytes(), time))
                {
                    *f = None;
                }
            }
            inner.last_event = Some(After {
                token: token.to_raw_document_buf(),
                time,
            });
            if deliver {
                docs.extend_from_slice(bytes);
                meta.events.push(EventMeta {
                    partition,
                    token: token.to_raw_document_buf(),
                    time,
                });
            }
        }
        if let Some(end) = &batch.end_token {
            // After events, the last one; after none (the stream caught up: every event of
            // that time was returned), the postBatchResumeToken.
            let at = match (&inner.last_event, read_events) {
                (Some(last), true) => last.clone(),
                _ => After {
                    token: end.clone(),
                    time: inner.last_event_time,
                },
            };
            // The stream passed a filter's exact position.
            for f in inner.filters.iter_mut() {
                if f.as_ref()
                    .is_some_and(|a| a.token.as_bytes() == end.as_bytes())
                {
                    *f = None;
                }
            }
            meta.covers = inner
                .held
                .keys()
                .copied()
                .filter(|q| inner.filters[*q as usize].is_none())
                .collect();
            meta.end = Some(at.clone());
            inner.stream_at = Some(at);
        }
        let count = meta.events.len();
        Ok((
            ReadBatch {
                docs,
                count,
                end_token: batch.end_token,
                position_time: batch.position_time,
            },
            meta,
        ))
    }

    /// The consumer processed `events` (in order) of a batch.
    pub(crate) fn commit_events(&self, events: &[EventMeta]) {
        let mut inner = self.lock();
        for e in events {
            if !inner.held.contains_key(&e.partition) {
                continue;
            }
            let position = Position::Stream {
                token: e.token.clone(),
                cluster_time: e.time,
                start_after: false,
            };
            inner.committed[e.partition as usize] = Some(position.clone());
            self.checkpointer(e.partition).commit(position, 1);
        }
    }

    /// The consumer processed a whole batch: the partitions caught up through it move to
    /// its end (never back).
    pub(crate) fn commit_end(&self, meta: &PartMeta) {
        let Some(end) = &meta.end else {
            return;
        };
        let mut inner = self.lock();
        for q in &meta.covers {
            if !inner.held.contains_key(q) {
                continue;
            }
            let committed = inner.committed[*q as usize].as_ref().and_then(After::of);
            let forward = match (committed.and_then(|c| c.time), end.time) {
                (Some(c), Some(e)) => e >= c,
                (None, _) => true,
                (Some(_), None) => false,
            };
            if !forward {
                continue;
            }
            let position = Position::Stream {
                token: end.token.clone(),
                cluster_time: end.time,
                start_after: false,
            };
            inner.committed[*q as usize] = Some(position.clone());
            self.checkpointer(*q).commit(position, 0);
        }
    }

    /// How many more processed events may be unsaved (the tightest held partition).
    pub(crate) fn room(&self) -> u64 {
        let held: Vec<u32> = self.lock().held.keys().copied().collect();
        held.iter()
            .map(|p| self.checkpointer(*p).room())
            .min()
            .unwrap_or_else(|| self.checkpointers[0].policy().max_unsaved_events)
    }

    pub(crate) fn every_events(&self) -> u64 {
        self.checkpointers[0].policy().every_events
    }

    /// Each handed-out event's partition, in order.
    pub(crate) fn partitions_of(meta: &PartMeta) -> Vec<u32> {
        meta.events.iter().map(|e| e.partition).collect()
    }

    pub(crate) fn meta_len(meta: &PartMeta) -> usize {
        meta.events.len()
    }

    pub(crate) fn events_of(meta: &PartMeta, from: usize, to: usize) -> &[EventMeta] {
        &meta.events[from.min(meta.events.len())..to.min(meta.events.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::durable::store::MemoryStore;
    use crate::engine::group::partitions::partition_of;
    use crate::engine::group::GroupSpec;
    use crate::engine::reader::source::ReaderSpec;
    use crate::engine::stream::spec::test_spec;
    use mongodb::bson::doc;

    fn set(count: u32) -> PartitionSet {
        let spec = test_spec(doc! {"name": "parts-unit"});
        let checkpointers = (0..count)
            .map(|p| {
                Arc::new(Checkpointer::new(
                    spec.owner(&format!("parts-unit#p{p}")),
                    false,
                    Arc::new(MemoryStore),
                    Default::default(),
                ))
            })
            .collect();
        let group = GroupSpec::parse(&doc! {"group": {"member": "a", "partitions": count}})
            .unwrap()
            .unwrap();
        let coord = Partitions::new("parts-unit", group, count, "mongodb://127.0.0.1:9");
        PartitionSet::new(Arc::new(coord), checkpointers)
    }

    /// The first document key of each partition of 2.
    fn keys() -> [i32; 2] {
        let mut found = [None, None];
        for id in 0.. {
            let key = mongodb::bson::to_vec(&doc! {"_id": id}).unwrap();
            let p = partition_of(Some(&key), 2) as usize;
            found[p].get_or_insert(id);
            if let [Some(a), Some(b)] = found {
                return [a, b];
            }
        }
        unreachable!()
    }

    /// Events (token, key, time) back to back, ending at `end`.
    fn batch(events: &[(&str, i32, u32)], end: &str) -> ReadBatch {
        let mut docs = Vec::new();
        for (token, key, time) in events {
            let event = doc! {"_id": {"_data": *token}, "operationType": "update",
            "clusterTime": Timestamp { time: *time, increment: 1 }, "documentKey": {"_id": *key}};
            docs.extend(mongodb::bson::to_vec(&event).unwrap());
        }
        ReadBatch {
            docs,
            count: events.len(),
            end_token: Some(RawDocumentBuf::from_document(&doc! {"_data": end}).unwrap()),
            position_time: None,
        }
    }

    fn tokens(meta: &PartMeta) -> Vec<String> {
        meta.events
            .iter()
            .map(|e| e.token.get_str("_data").unwrap().to_string())
            .collect()
    }

    #[test]
    fn each_partition_skips_up_to_its_own_position_even_within_one_cluster_time() {
        let parts = set(2);
        let [k0, k1] = keys();
        assert_eq!(parts.gain(0, 1, None, false), None, "nothing read yet");
        assert_eq!(parts.gain(1, 1, None, false), None);
        // One insertMany: four events of one cluster time.
        let read = batch(
            &[("e1", k0, 5), ("e2", k1, 5), ("e3", k0, 5), ("e4", k1, 5)],
            "pbrt",
        );
        let (out, meta) = parts.filter(read).unwrap();
        assert_eq!(out.count, 4);
        assert_eq!(tokens(&meta), ["e1", "e2", "e3", "e4"]);
        // Processed: e1 (partition 0) and e2 (partition 1) only.
        parts.commit_events(&meta.events[..2]);
        // A reset: both go back to their committed events, which share a time: the stream
        // re-opens at that time (inclusive), each partition skipping by token.
        let reopen = parts.rewind().expect("held").expect("a position");
        assert_eq!(
            reopen,
            Position::StreamAt {
                cluster_time: Timestamp {
                    time: 5,
                    increment: 1
                }
            }
        );
        let again = batch(
            &[("e1", k0, 5), ("e2", k1, 5), ("e3", k0, 5), ("e4", k1, 5)],
            "pbrt",
        );
        let (out, meta) = parts.filter(again).unwrap();
        assert_eq!(tokens(&meta), ["e3", "e4"], "each after its own position");
        assert_eq!(out.count, 2);
        // Partition 1 handed over: only partition 0's events go out.
        parts.drop_partition(1);
        let (_, meta) = parts
            .filter(batch(&[("e5", k1, 6), ("e6", k0, 6)], "pbrt2"))
            .unwrap();
        assert_eq!(tokens(&meta), ["e6"]);
        assert_eq!(meta.covers, vec![0]);
    }

    #[test]
    fn a_partition_taken_at_an_earlier_position_re_reads_and_the_others_skip_what_they_had() {
        let parts = set(2);
        let [k0, k1] = keys();
        parts.gain(0, 1, None, false);
        let (_, meta) = parts
            .filter(batch(
                &[("e1", k1, 5), ("e2", k0, 6), ("e3", k1, 7)],
                "pbrt",
            ))
            .unwrap();
        assert_eq!(tokens(&meta), ["e2"], "partition 1 is not held");
        // Partition 1 comes with a stored position at e1: the stream re-reads from there.
        let stored = Position::Stream {
            token: RawDocumentBuf::from_document(&doc! {"_data": "e1"}).unwrap(),
            cluster_time: Some(Timestamp {
                time: 5,
                increment: 1,
            }),
            start_after: false,
        };
        let reopen = parts.gain(1, 2, Some(stored.clone()), false);
        assert_eq!(reopen, Some(Some(stored.clone())));
        parts.reopening_at(Some(&stored));
        let (_, meta) = parts
            .filter(batch(
                &[("e2", k0, 6), ("e3", k1, 7), ("e4", k0, 8)],
                "pbrt2",
            ))
            .unwrap();
        assert_eq!(tokens(&meta), ["e3", "e4"], "e2 was handed out already");
    }
}
