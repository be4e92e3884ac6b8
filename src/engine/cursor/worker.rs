//! The background worker of one restartable cursor: opens the `find`, reads batches, and
//! re-opens after the last key received on any resumable failure.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{doc, Bson, RawBsonRef, RawDocumentBuf};
use mongodb::options::CursorType;
use mongodb::raw_batch_cursor::RawBatchCursor;
use mongodb::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::spec::{key_of, CursorSpec, PositionLostPolicy};
use super::{CursorEnd, CursorItem};
use crate::engine::checkpoint::Checkpointer;
use crate::engine::errors::{EngineError, ErrorCode};
use crate::engine::position::Position;
use crate::engine::reporter::Reporter;
use crate::engine::status::{Shared, StreamState};

/// The server's code for a tailable cursor whose position was overwritten.
pub const CAPPED_POSITION_LOST: i32 = 136;

enum Flow {
    Reopen,
    Stop,
}

pub(crate) struct CursorWorker {
    spec: Arc<CursorSpec>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<CursorItem>,
    /// The key of the last document sent to the consumer: re-opens continue after it.
    last_key: Option<Bson>,
    /// The last key whose loss was already reported (a lost position is reported once).
    lost_reported_for: Option<Bson>,
    report: Reporter<CursorItem>,
    checkpointer: Option<Arc<Checkpointer>>,
}

/// One batch read from the server.
struct Docs {
    bytes: Vec<u8>,
    count: usize,
    last_key: Option<Bson>,
}

impl CursorWorker {
    pub(crate) fn new(
        spec: Arc<CursorSpec>,
        shared: Arc<Shared>,
        stop: CancellationToken,
        tx: mpsc::Sender<CursorItem>,
        checkpointer: Option<Arc<Checkpointer>>,
    ) -> Self {
        let last_key = spec.last_key.clone();
        // stop() (and close(), its parent) cancels `stop`: the read requests nothing more.
        let report = Reporter::new(shared.clone(), tx.clone(), stop);
        CursorWorker {
            spec,
            shared,
            tx,
            last_key,
            lost_reported_for: None,
            report,
            checkpointer,
        }
    }

    /// Continues after the token store's key, unless the read was given one (`lastKey`, a
    /// `restart()` state) — that wins. Returns false when the read must stop.
    async fn restore_position(&mut self) -> bool {
        let Some(ck) = self.checkpointer.clone() else {
            return true;
        };
        if self.last_key.is_some() {
            return true;
        }
        let restored = self.report.restore(&ck, &self.spec.backoff).await;
        match restored {
            None => false,
            Some(Some(Position::Cursor { last_key })) => {
                self.last_key = Some(last_key);
                true
            }
            // None stored (load_position refuses a change stream's record).
            Some(_) => true,
        }
    }

    pub(crate) async fn run(mut self) {
        if !self.restore_position().await {
            return;
        }
        let Some(client) = self.report.client(&self.spec.uri, &self.spec.backoff).await else {
            return;
        };
        loop {
            if self.shared.state().is_terminal() {
                return;
            }
            tracing::debug!(resuming = self.last_key.is_some(), "opening the cursor");
            let open = self.watchdog(open_cursor(&client, &self.spec, self.last_key.as_ref()));
            let flow = match self.or_cancel(open).await {
                None => Flow::Stop,
                Some(Ok(Ok(cursor))) => match self.check_position(&client).await {
                    None => self.pump(cursor).await,
                    Some(flow) => flow,
                },
                Some(Ok(Err(e))) => self.after_error(e).await,
                Some(Err(silent)) => self.stalled(silent).await,
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    /// Reads batches from one cursor until it fails, ends, or the read is stopped. The
    /// cursor is dropped on return, which kills it on the server.
    async fn pump(&mut self, mut cursor: RawBatchCursor) -> Flow {
        let mut first_reply = true;
        loop {
            // Reserve the slot BEFORE reading: at most one batch waits for the consumer.
            let Some(Ok(permit)) = self.or_cancel(self.tx.clone().reserve_owned()).await else {
                return Flow::Stop;
            };
            let next = match self.or_cancel(self.watchdog(cursor.next())).await {
                None => return Flow::Stop,
                Some(Ok(next)) => next,
                Some(Err(silent)) => {
                    drop(permit);
                    drop(cursor);
                    return self.stalled(silent).await;
                }
            };
            let batch = match next {
                Some(Ok(batch)) => batch,
                Some(Err(e)) => {
                    drop(permit);
                    drop(cursor);
                    return self.after_error(e).await;
                }
                None if self.spec.tailable => {
                    // A dead tailable cursor (nothing matched yet, or the server let it go):
                    // wait a little, then re-issue after the last key.
                    drop(permit);
                    tracing::debug!("tailable cursor is dead; re-issuing it");
                    return match self
                        .or_cancel(tokio::time::sleep(self.spec.tail_retry))
                        .await
                    {
                        None => Flow::Stop,
                        Some(()) => Flow::Reopen,
                    };
                }
                None => {
                    self.shared.end();
                    permit.send(CursorItem::Ended(CursorEnd::Exhausted));
                    return Flow::Stop;
                }
            };
            self.shared.record_reply();
            let docs = match read_batch(batch.as_raw_document(), &self.spec.key) {
                Ok(docs) => docs,
                Err(e) => {
                    drop(permit);
                    self.fail(e).await;
                    return Flow::Stop;
                }
            };
            if !self.shared.transition(StreamState::Streaming) {
                return Flow::Stop;
            }
            let is_open_reply = std::mem::take(&mut first_reply);
            let progressed = docs.count > 0 || !is_open_reply;
            let mut permit = permit;
            if let Some(recovery) = progressed.then(|| self.report.progress()).flatten() {
                tracing::info!(
                    attempts = recovery.attempts,
                    downtime_ms = recovery.downtime.as_millis() as u64,
                    "cursor resumed"
                );
                let tx = permit.send(CursorItem::Resumed {
                    attempts: recovery.attempts,
                    downtime: recovery.downtime,
                });
                permit = match self.or_cancel(tx.reserve_owned()).await {
                    Some(Ok(p)) => p,
                    _ => return Flow::Stop,
                };
            }
            if docs.count == 0 {
                continue;
            }
            self.shared.record_progress(docs.count, None);
            self.last_key = docs.last_key;
            permit.send(CursorItem::Batch {
                docs: docs.bytes,
                count: docs.count,
            });
        }
    }

    async fn after_error(&mut self, e: mongodb::error::Error) -> Flow {
        let error = EngineError::from_driver(&e);
        if error.server_code == Some(CAPPED_POSITION_LOST) {
            return self.position_lost(error).await;
        }
        if self.recover(error).await {
            Flow::Reopen
        } else {
            Flow::Stop
        }
    }

    /// A tailable read re-opened after its last key: if the capped collection no longer
    /// holds that document, documents after it may have been overwritten while nothing was
    /// reading (mongod reports that only for a live cursor). Checked after the open, so a
    /// document still there proves nothing after it was lost before the new cursor began.
    /// `None`: go on with the new cursor; `Some(flow)`: the lost position was handled.
    async fn check_position(&mut self, client: &Client) -> Option<Flow> {
        let last = self.last_key.clone().filter(|_| self.spec.tailable)?;
        if self.lost_reported_for.as_ref() == Some(&last) {
            return None;
        }
        let collection = client
            .database(&self.spec.db)
            .collection::<RawDocumentBuf>(&self.spec.collection);
        let lookup = collection
            .find_one(doc! { self.spec.key.as_str(): last })
            .projection(doc! { "_id": 1 });
        match self.or_cancel(self.watchdog(lookup.into_future())).await {
            None => Some(Flow::Stop),
            Some(Ok(Ok(Some(_)))) => None,
            Some(Ok(Ok(None))) => {
                let mut error = EngineError::new(
                    ErrorCode::ServerError,
                    "the capped collection no longer holds the last document read: documents \
                     after it may have been overwritten while the cursor was not reading",
                );
                error.server_code = Some(CAPPED_POSITION_LOST);
                error.code_name = Some("CappedPositionLost".to_string());
                match self.position_lost(error).await {
                    // Continue with the cursor just opened: the oldest documents left.
                    Flow::Reopen => None,
                    Flow::Stop => Some(Flow::Stop),
                }
            }
            Some(Ok(Err(e))) => Some(self.after_error(e).await),
            Some(Err(silent)) => Some(self.stalled(silent).await),
        }
    }

    /// Runs one server round trip under the stall watchdog: `Err(waited)` when no reply
    /// came within the await time plus `stallTimeoutMS`.
    async fn watchdog<F: std::future::Future>(&self, f: F) -> Result<F::Output, Duration> {
        let Some(stall) = self.spec.stall_timeout else {
            return Ok(f.await);
        };
        let limit = stall + self.spec.max_await_time.unwrap_or(Duration::ZERO);
        tokio::time::timeout(limit, f).await.map_err(|_| limit)
    }

    /// Announces a stall, then re-opens after the last key like any resumable failure.
    async fn stalled(&mut self, silent: Duration) -> Flow {
        if self.report.stalled(silent, &self.spec.backoff).await {
            Flow::Reopen
        } else {
            Flow::Stop
        }
    }

    /// Documents after the last key were overwritten before they were read: never silent.
    async fn position_lost(&mut self, error: EngineError) -> Flow {
        tracing::error!(error = %error, "cursor position lost");
        self.lost_reported_for = self.last_key.clone();
        let lost = CursorItem::PositionLost {
            error: error.clone(),
        };
        if !self.report.send(lost).await {
            return Flow::Stop;
        }
        match self.spec.on_position_lost {
            PositionLostPolicy::Error => {
                self.fail(error).await;
                Flow::Stop
            }
            // A new find after the last key starts at the oldest document still there.
            PositionLostPolicy::RestartFromOldest => Flow::Reopen,
        }
    }

    async fn recover(&mut self, error: EngineError) -> bool {
        self.report.recover(error, &self.spec.backoff).await
    }

    async fn fail(&mut self, error: EngineError) {
        self.report.fail(error).await;
    }

    /// Runs `f` unless the read is stopped or closed first; `None` means "stop".
    async fn or_cancel<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        self.report.or_cancel(f).await
    }
}

/// Copies a reply's documents into one buffer and reads the last one's key.
fn read_batch(reply: &mongodb::bson::RawDocument, key: &str) -> Result<Docs, EngineError> {
    let bad = |what: &str| {
        EngineError::new(
            ErrorCode::ClientError,
            format!("the server sent a find reply without {what}"),
        )
    };
    let cursor = reply
        .get_document("cursor")
        .map_err(|_| bad("a cursor document"))?;
    let docs = cursor
        .get_array("firstBatch")
        .or_else(|_| cursor.get_array("nextBatch"))
        .map_err(|_| bad("firstBatch/nextBatch"))?;
    let mut out = Docs {
        bytes: Vec::with_capacity(docs.as_bytes().len()),
        count: 0,
        last_key: None,
    };
    let mut last = None;
    for item in docs {
        let RawBsonRef::Document(d) = item.map_err(|_| bad("well-formed documents"))? else {
            return Err(bad("documents"));
        };
        out.bytes.extend_from_slice(d.as_bytes());
        out.count += 1;
        last = Some(d);
    }
    if let Some(d) = last {
        out.last_key = Some(key_of(d, key).ok_or_else(|| {
            EngineError::new(
                ErrorCode::InvalidOption,
                format!("a document has no key field \"{key}\"; the key must be present in every document"),
            )
        })?);
    }
    Ok(out)
}

async fn open_cursor(
    client: &Client,
    spec: &CursorSpec,
    last_key: Option<&Bson>,
) -> Result<RawBatchCursor, mongodb::error::Error> {
    let command = RawDocumentBuf::from_document(&spec.find_command(last_key))?;
    let db = client.database(&spec.db);
    let mut action = db.run_raw_cursor_command(command);
    if let Some(n) = spec.batch_size {
        action = action.batch_size(n);
    }
    if spec.tailable {
        action = action.cursor_type(if spec.await_data {
            CursorType::TailableAwait
        } else {
            CursorType::Tailable
        });
    }
    if let Some(t) = spec.max_await_time {
        action = action.max_time(t);
    }
    action.batch().await
}
