//! The background worker of one change stream: opens, reads and re-opens the server
//! cursor, and hands items to the consumer through a one-slot channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mongodb::bson::RawDocumentBuf;
use mongodb::raw_batch_cursor::RawBatchCursor;
use mongodb::Client;
use tokio::sync::mpsc;

use super::batch::parse_reply;
use super::checkpoint::Checkpointer;
use super::client_pool::ClientLease;
use super::errors::{EngineError, ErrorCode};
use super::oplog::{read_window, OplogWindow};
use super::position::Position;
use super::reporter::Reporter;
use super::resume::{aggregate_command, choose_start, ResumeState};
use super::spec::{HistoryLostPolicy, InvalidatePolicy, StartPoint, WatchSpec};
use super::status::{keystring_token_time, Shared, StreamState};
use super::stream::{EndReason, EventBatch, StreamItem};

/// How long a getMore may take when the user sets no `maxAwaitTimeMS` (the server's
/// default await time); the stall watchdog waits this plus `stallTimeoutMS`.
const SERVER_DEFAULT_AWAIT: Duration = Duration::from_secs(1);

enum Flow {
    Reopen,
    Stop,
}

pub(crate) struct Worker {
    spec: Arc<WatchSpec>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<StreamItem>,
    resume: ResumeState,
    report: Reporter<StreamItem>,
    invalidated: bool,
    /// Whether this server advances an idle stream's position (a no-op heartbeat): only
    /// then does "no advance for stallTimeoutMS" mean a stall.
    idle_advance_seen: bool,
    checkpointer: Option<Arc<Checkpointer>>,
}

impl Worker {
    pub(crate) fn new(
        spec: Arc<WatchSpec>,
        shared: Arc<Shared>,
        tx: mpsc::Sender<StreamItem>,
        checkpointer: Option<Arc<Checkpointer>>,
    ) -> Self {
        let resume = ResumeState::new(&spec);
        let report = Reporter::new(shared.clone(), tx.clone(), shared.cancel.clone());
        Worker {
            spec,
            shared,
            tx,
            resume,
            report,
            invalidated: false,
            idle_advance_seen: false,
            checkpointer,
        }
    }

    /// Continues from the token store's record, unless the user gave a start option (an
    /// explicit `resumeAfter`/`startAfter`/`startAtOperationTime` wins). Returns false
    /// when the stream must stop.
    async fn restore_position(&mut self) -> bool {
        let Some(ck) = self.checkpointer.clone() else {
            return true;
        };
        if self.spec.start != StartPoint::Now {
            return true;
        }
        let restored = self.report.restore(&ck, &self.spec.backoff).await;
        match restored {
            None => false,
            Some(Some(Position::Stream {
                token,
                cluster_time,
                start_after,
            })) => {
                self.shared.record_progress(0, cluster_time);
                self.resume.restore(token, start_after);
                true
            }
            // None stored (load_position refuses a cursor's record).
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
            let start = choose_start(&self.spec, &self.resume);
            tracing::debug!(start = start.kind(), "opening the change stream cursor");
            let open = open_cursor(&client, &self.spec, &start);
            let flow = match self.or_cancel(self.watchdog(open)).await {
                None => Flow::Stop,
                Some(Err(silent)) => self.stalled(silent).await,
                Some(Ok(Ok(cursor))) => self.pump(cursor, &client).await,
                Some(Ok(Err(e))) => self.reopen_after(e, &client).await,
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    /// Reads batches from one cursor until it fails, ends, stalls, or the stream closes.
    /// The cursor is dropped on return, which kills it on the server.
    async fn pump(&mut self, mut cursor: RawBatchCursor, client: &ClientLease) -> Flow {
        let mut first_reply = true;
        let mut last_progress = Instant::now();
        loop {
            // Reserve the slot BEFORE reading: at most one batch waits for the consumer.
            let Some(Ok(permit)) = self.or_cancel(self.tx.clone().reserve_owned()).await else {
                return Flow::Stop;
            };
            let next = match self.or_cancel(self.watchdog(cursor.next())).await {
                None => return Flow::Stop,
                Some(Err(silent)) => {
                    drop(permit);
                    return self.stalled(silent).await;
                }
                Some(Ok(next)) => next,
            };
            let reply = match next {
                Some(Ok(reply)) => reply,
                Some(Err(e)) => {
                    drop(permit);
                    drop(cursor);
                    return self.reopen_after(e, client).await;
                }
                // The server ends a change stream cursor only after an invalidate (drop,
                // rename, dropDatabase) — also when the pipeline filtered that event out.
                None => {
                    let saw_invalidate = std::mem::take(&mut self.invalidated);
                    if self.spec.on_invalidate == InvalidatePolicy::Close {
                        self.shared.end();
                        permit.send(StreamItem::Ended(EndReason::Invalidated));
                        return Flow::Stop;
                    }
                    drop(permit);
                    if !saw_invalidate {
                        // Without the invalidate event there is no token `startAfter` can
                        // continue from; guessing a position could skip events.
                        self.fail(EngineError::new(
                            ErrorCode::ChangeStreamFatal,
                            "the server ended the change stream without an invalidate event \
                             (does the pipeline filter it out?); onInvalidate: 'restart' needs \
                             invalidate events to pass the pipeline",
                        ))
                        .await;
                        return Flow::Stop;
                    }
                    // Restart: continue with `startAfter` the invalidate token, so a dropped
                    // collection that is re-created keeps streaming.
                    tracing::info!("restarting after invalidate");
                    self.resume.restart_after_invalidate();
                    return Flow::Reopen;
                }
            };
            self.shared.record_reply();
            let parsed = match parse_reply(reply.as_raw_document()) {
                Ok(parsed) => parsed,
                Err(e) => {
                    drop(permit);
                    self.fail(e).await;
                    return Flow::Stop;
                }
            };
            let is_open_reply = std::mem::take(&mut first_reply);
            if is_open_reply {
                self.resume.record_open(&self.spec, parsed.operation_time);
            }
            // After an invalidate, the position is the invalidate event's own token: the
            // only one `startAfter` can continue from.
            let end_token = if parsed.invalidated {
                parsed.last_event_id.clone()
            } else {
                parsed.post_batch_token.clone()
            };
            let advanced =
                self.resume
                    .record_batch(parsed.count, parsed.last_event_id.clone(), end_token);
            self.invalidated = parsed.invalidated;
            if !self.shared.transition(StreamState::Streaming) {
                return Flow::Stop;
            }
            if !advanced {
                if let Some(silent) = self.idle_stall(last_progress) {
                    drop(permit);
                    return self.stalled(silent).await;
                }
                continue;
            }
            last_progress = Instant::now();
            if parsed.count == 0 && !is_open_reply {
                self.idle_advance_seen = true;
            }
            let position_time = parsed
                .last_cluster_time
                .or(parsed.operation_time)
                .or_else(|| self.resume.token().and_then(|t| keystring_token_time(t)));
            self.shared.record_progress(parsed.count, position_time);
            let mut permit = permit;
            // The outage ends on real progress: an event, or a getMore that moved the
            // position. A successful `aggregate` alone proves little (the next getMore may
            // fail again), so its reply does not reset the backoff.
            let progressed = parsed.count > 0 || !is_open_reply;
            if let Some(recovery) = progressed.then(|| self.report.progress()).flatten() {
                tracing::info!(
                    attempts = recovery.attempts,
                    downtime_ms = recovery.downtime.as_millis() as u64,
                    "change stream resumed"
                );
                let tx = permit.send(StreamItem::Resumed {
                    attempts: recovery.attempts,
                    downtime: recovery.downtime,
                });
                permit = match self.or_cancel(tx.reserve_owned()).await {
                    Some(Ok(p)) => p,
                    _ => return Flow::Stop,
                };
            }
            permit.send(StreamItem::Batch(EventBatch {
                events: parsed.events,
                count: parsed.count,
                end_token: self.resume.token().cloned(),
                position_time,
            }));
        }
    }

    /// Runs one server round trip under the stall watchdog: `Err(waited)` when no reply
    /// came within the await time plus `stallTimeoutMS`.
    async fn watchdog<F: std::future::Future>(&self, f: F) -> Result<F::Output, Duration> {
        let Some(stall) = self.spec.stall_timeout else {
            return Ok(f.await);
        };
        let limit = stall + self.spec.max_await_time.unwrap_or(SERVER_DEFAULT_AWAIT);
        tokio::time::timeout(limit, f).await.map_err(|_| limit)
    }

    /// On a server known to advance idle streams, no advance for `stallTimeoutMS` while
    /// replies keep coming is a stall too (the cursor answers but is stuck).
    fn idle_stall(&self, last_progress: Instant) -> Option<Duration> {
        let stall = self.spec.stall_timeout?;
        let silent = last_progress.elapsed();
        (self.idle_advance_seen && silent > stall).then_some(silent)
    }

    /// Announces a stall, then re-opens from the cached token like any resumable failure.
    async fn stalled(&mut self, silent: Duration) -> Flow {
        if self.report.stalled(silent, &self.spec.backoff).await {
            Flow::Reopen
        } else {
            Flow::Stop
        }
    }

    async fn reopen_after(&mut self, e: mongodb::error::Error, client: &ClientLease) -> Flow {
        let error = EngineError::from_driver(&e);
        if error.code == ErrorCode::ChangeStreamHistoryLost {
            return self.history_lost(error, client).await;
        }
        self.retry_after(error).await
    }

    /// The position fell off the oplog. Say which interval may be missing — from the
    /// position to the oldest entry still there — then fail or go on from "now".
    async fn history_lost(&mut self, error: EngineError, client: &ClientLease) -> Flow {
        let from = self.shared.snapshot().position_time;
        let to = match self.or_cancel(read_window(client, from)).await {
            None => return Flow::Stop,
            Some(Ok(OplogWindow::Known { oldest, .. })) => Some(oldest),
            Some(_) => None,
        };
        tracing::error!(?from, ?to, "change stream history lost");
        let token = self.resume.token().cloned();
        if !self
            .report
            .send(StreamItem::HistoryLost { from, to, token })
            .await
        {
            return Flow::Stop;
        }
        match self.spec.on_history_lost {
            HistoryLostPolicy::Error => {
                self.fail(error).await;
                Flow::Stop
            }
            HistoryLostPolicy::ResumeFromNow => {
                self.resume.forget_position();
                Flow::Reopen
            }
        }
    }

    async fn retry_after(&mut self, error: EngineError) -> Flow {
        if self.recover(error).await {
            Flow::Reopen
        } else {
            Flow::Stop
        }
    }

    async fn recover(&mut self, error: EngineError) -> bool {
        self.report.recover(error, &self.spec.backoff).await
    }

    async fn fail(&mut self, error: EngineError) {
        self.report.fail(error).await;
    }

    /// Runs `f` unless the stream is closed first; `None` means "closed".
    async fn or_cancel<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        self.report.or_cancel(f).await
    }
}

async fn open_cursor(
    client: &Client,
    spec: &WatchSpec,
    start: &StartPoint,
) -> Result<RawBatchCursor, mongodb::error::Error> {
    let command = RawDocumentBuf::from_document(&aggregate_command(spec, start))?;
    let db = client.database(spec.command_db());
    let mut action = db.run_raw_cursor_command(command);
    if let Some(n) = spec.batch_size {
        action = action.batch_size(n);
    }
    if let Some(t) = spec.max_await_time {
        action = action.max_time(t);
    }
    if let Some(c) = &spec.comment {
        action = action.comment(c.clone());
    }
    action.batch().await
}
