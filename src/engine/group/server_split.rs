//! Where a partitioned member's events are split (`group.split`): on the server, when it
//! computes the partitions' hash itself (`$toHashedIndexKey`, MongoDB 7.0+) and agrees with
//! ours (`hashed_key.rs`), the member's stream carries a `$match` for the partitions it
//! holds and the server sends nothing else; otherwise every member receives every event and
//! keeps its own (`reader/partitioned.rs` filters either way, so the server's filter only
//! saves traffic and never decides alone). Detected at the first open, by a probe that
//! asks the server to hash sample keys.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document};
use mongodb::error::ErrorKind;
use mongodb::Client;

use super::hashed_key::hash_document;

/// `group.split`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitChoice {
    /// On the server when it can, else here.
    #[default]
    Auto,
    /// Always here (the server does no per-event work for the group).
    Client,
}

impl SplitChoice {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "auto" => Some(SplitChoice::Auto),
            "client" => Some(SplitChoice::Client),
            _ => None,
        }
    }
}

/// Where the split happens, once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitMode {
    Server,
    Client,
}

impl SplitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SplitMode::Server => "server",
            SplitMode::Client => "client",
        }
    }
}

/// A member's split mode: unknown until its stream first opens, then fixed.
#[derive(Debug, Default)]
pub struct SplitState(AtomicU8);

impl SplitState {
    pub fn get(&self) -> Option<SplitMode> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(SplitMode::Client),
            2 => Some(SplitMode::Server),
            _ => None,
        }
    }

    fn set(&self, mode: SplitMode) {
        let v = match mode {
            SplitMode::Client => 1,
            SplitMode::Server => 2,
        };
        self.0.store(v, Ordering::Release);
    }
}

/// What a partitioned member's stream filters on at its next open.
#[derive(Debug, Clone)]
pub struct PartitionFilter {
    pub count: u32,
    /// The partitions held now.
    pub held: Vec<u32>,
    pub choice: SplitChoice,
    pub state: Arc<SplitState>,
}

impl PartitionFilter {
    /// The `$match` stage to append to the stream's pipeline (`None`: the split is ours),
    /// deciding the mode first if it is not known yet (`db`: where the probe runs;
    /// `resume_token`: the event the stream resumes after, if it does).
    pub async fn stage(
        &self,
        client: &Client,
        db: &str,
        resume_token: Option<&Document>,
    ) -> Result<Option<Document>, mongodb::error::Error> {
        let mode = match (self.choice, self.state.get()) {
            (_, Some(mode)) => mode,
            (SplitChoice::Client, None) => {
                self.state.set(SplitMode::Client);
                SplitMode::Client
            }
            (SplitChoice::Auto, None) => {
                let mode = probe(client, db).await?;
                tracing::info!(
                    split = mode.as_str(),
                    "partitions are split on the {}",
                    mode.as_str()
                );
                self.state.set(mode);
                mode
            }
        };
        Ok((mode == SplitMode::Server)
            .then(|| partition_stage(self.count, &self.held, resume_token)))
    }
}

/// Keeps the events of the `held` partitions of `count` (and those without a `documentKey`,
/// which the member assigns itself): `$toHashedIndexKey` modulo `count` is in `(-count,
/// count)`, so partition `p` is the remainder `p` or `p - count`. It also keeps the event
/// the stream resumes after (`resume_token`): the set held may have changed since it was
/// read, and a server that applies the filter while scanning the oplog would otherwise not
/// find that event and refuse to resume (280); the server swallows it either way.
pub fn partition_stage(count: u32, held: &[u32], resume_token: Option<&Document>) -> Document {
    let count = i64::from(count);
    let remainders: Vec<Bson> = held
        .iter()
        .flat_map(|p| {
            let p = i64::from(*p);
            [p, p - count]
        })
        .map(Bson::Int64)
        .collect();
    let mut kept = vec![Bson::Document(doc! {"documentKey": {"$exists": false}})];
    if let Some(token) = resume_token {
        kept.push(Bson::Document(doc! {"_id": token.clone()}));
    }
    kept.push(Bson::Document(doc! {"$expr": {"$in": [
        {"$mod": [{"$toHashedIndexKey": "$documentKey"}, count]},
        remainders,
    ]}}));
    doc! {"$match": {"$or": kept}}
}

/// Keys of the types a `documentKey` holds, for the probe.
fn sample_keys() -> Vec<Document> {
    let oid = ObjectId::parse_str("5b2be413c06d924ab26ff9ca").unwrap_or_default();
    let decimal: Decimal128 = "2.5"
        .parse()
        .unwrap_or_else(|_| Decimal128::from_bytes([0; 16]));
    vec![
        doc! {"_id": oid},
        doc! {"_id": "k1"},
        doc! {"_id": 42},
        doc! {"_id": 1i64 << 40},
        doc! {"_id": -7.75},
        doc! {"_id": decimal},
        doc! {"_id": {"a": 1, "b": ["x", {"c": true}]}},
        doc! {"_id": Binary { subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: (0..16).collect() }},
        doc! {"_id": DateTime::from_millis(1_700_000_000_000)},
        doc! {"_id": Bson::Null},
        doc! {"region": "eu", "_id": 7},
    ]
}

/// Whether the server computes the partitions' hash, and as we do. A command error (no
/// `$documents` or no `$toHashedIndexKey`: before 7.0, or another server) means no; a
/// network error is returned (the open is retried).
pub async fn probe(client: &Client, db: &str) -> Result<SplitMode, mongodb::error::Error> {
    let keys = sample_keys();
    let documents: Vec<Document> = keys.iter().map(|k| doc! {"k": k.clone()}).collect();
    let pipeline = vec![
        doc! {"$documents": documents},
        doc! {"$project": {"_id": 0, "h": {"$toHashedIndexKey": "$k"}}},
    ];
    let answered = match client.database(db).aggregate(pipeline).await {
        Ok(cursor) => cursor.try_collect::<Vec<Document>>().await,
        Err(e) => Err(e),
    };
    let hashes = match answered {
        Ok(hashes) => hashes,
        Err(e) => {
            if let ErrorKind::Command(c) = &*e.kind {
                tracing::debug!(
                    code = c.code,
                    "the server cannot hash partition keys ({}); splitting here",
                    c.code_name
                );
                return Ok(SplitMode::Client);
            }
            return Err(e);
        }
    };
    for (key, answer) in keys
        .iter()
        .zip(hashes.iter().chain(std::iter::repeat(&Document::new())))
    {
        let ours = mongodb::bson::to_vec(key)
            .ok()
            .and_then(|b| hash_document(&b).ok());
        let theirs = answer.get_i64("h").ok();
        if ours.is_none() || ours != theirs {
            tracing::warn!(
                ?key,
                ?ours,
                ?theirs,
                "the server hashes a partition key differently; splitting here"
            );
            return Ok(SplitMode::Client);
        }
    }
    Ok(SplitMode::Server)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the stage's `$or` keeps.
    fn kept(stage: &Document) -> Vec<Bson> {
        stage
            .get_document("$match")
            .and_then(|m| m.get_array("$or"))
            .unwrap()
            .clone()
    }

    /// The remainders its `$in` lists.
    fn remainders(stage: &Document) -> Vec<i64> {
        let kept = kept(stage);
        let expr = kept.last().and_then(Bson::as_document).unwrap();
        let listed = expr
            .get_document("$expr")
            .and_then(|e| e.get_array("$in"))
            .unwrap();
        listed[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_i64().unwrap())
            .collect()
    }

    #[test]
    fn the_stage_keeps_both_remainders_of_each_held_partition() {
        let stage = partition_stage(6, &[0, 4], None);
        let kept = kept(&stage);
        assert_eq!(kept.len(), 2);
        assert_eq!(
            kept[0],
            Bson::Document(doc! {"documentKey": {"$exists": false}})
        );
        let expr = kept[1].clone();
        assert_eq!(
            expr,
            Bson::Document(doc! {"$expr": {"$in": [
                {"$mod": [{"$toHashedIndexKey": "$documentKey"}, 6i64]},
                [0i64, -6i64, 4i64, -2i64],
            ]}})
        );
    }

    /// The server's remainder (truncated, sign of the hash) is one of the two listed for
    /// the partition computed here (`rem_euclid`).
    #[test]
    fn the_servers_remainder_names_the_same_partition() {
        for count in [1u32, 2, 6, 7, 1024] {
            for h in [
                0i64,
                1,
                -1,
                5,
                -5,
                6,
                -6,
                12345,
                -12345,
                i64::MAX,
                i64::MIN,
                i64::MIN + 1,
            ] {
                let p = crate::engine::group::partitions::partition_of_hash(h, count);
                let listed = remainders(&partition_stage(count, &[p], None));
                let r = h % i64::from(count);
                assert!(r == i64::from(p) || r == i64::from(p) - i64::from(count));
                assert!(listed.contains(&r), "{h} {count}: {listed:?}");
            }
        }
    }

    #[test]
    fn the_event_resumed_after_is_kept() {
        let token = doc! {"_data": "8263"};
        let kept = kept(&partition_stage(6, &[1], Some(&token)));
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[1], Bson::Document(doc! {"_id": token}));
    }

    #[test]
    fn choices_parse() {
        assert_eq!(SplitChoice::parse("auto"), Some(SplitChoice::Auto));
        assert_eq!(SplitChoice::parse("client"), Some(SplitChoice::Client));
        assert_eq!(SplitChoice::parse("server"), None);
    }
}
