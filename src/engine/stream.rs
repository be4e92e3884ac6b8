//! The change stream engine: a background worker that opens, reads and re-opens the
//! server cursor, and hands batches to one consumer through a one-slot channel (so at
//! most one batch is prefetched while the consumer works on the current one).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mongodb::bson::{RawDocumentBuf, Timestamp};
use mongodb::raw_batch_cursor::RawBatchCursor;
use mongodb::Client;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::batch::parse_reply;
use super::client_pool::client_for;
use super::errors::{EngineError, ErrorCode};
use super::resume::{aggregate_command, choose_start, ResumeState};
use super::spec::{StartPoint, WatchSpec};

/// The stream's lifecycle. Only `close()` moves it to `Closing`/`Closed`, and nothing
/// moves it out of a terminal state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Created; the worker starts on the first `next()`.
    Idle,
    Opening,
    Streaming,
    Reconnecting {
        attempt: u32,
    },
    Closing,
    Closed,
    Failed,
}

impl StreamState {
    fn is_terminal(self) -> bool {
        matches!(
            self,
            StreamState::Closing | StreamState::Closed | StreamState::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Idle => "idle",
            StreamState::Opening => "starting",
            StreamState::Streaming => "streaming",
            StreamState::Reconnecting { .. } => "reconnecting",
            StreamState::Closing => "closing",
            StreamState::Closed => "closed",
            StreamState::Failed => "failed",
        }
    }
}

/// Events after which the stream ends without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Closed,
    /// The watched collection/database was dropped or renamed.
    Invalidated,
}

/// A batch as handed to the consumer.
pub struct EventBatch {
    /// `count` BSON documents back to back.
    pub events: Vec<u8>,
    pub count: usize,
    /// The resume token after the whole batch.
    pub end_token: Option<RawDocumentBuf>,
    pub last_cluster_time: Option<Timestamp>,
}

impl std::fmt::Debug for EventBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBatch")
            .field("count", &self.count)
            .field("bytes", &self.events.len())
            .field("last_cluster_time", &self.last_cluster_time)
            .finish()
    }
}

/// What `next()` yields.
#[derive(Debug)]
pub enum StreamItem {
    Batch(EventBatch),
    Reconnecting {
        attempt: u32,
        delay: Duration,
        error: EngineError,
    },
    Resumed {
        attempts: u32,
        downtime: Duration,
    },
    /// Fatal: the stream is closed.
    Failed(EngineError),
    Ended(EndReason),
}

struct Shared {
    state: Mutex<StreamState>,
    cancel: CancellationToken,
}

impl Shared {
    fn state(&self) -> StreamState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves to `to` unless the stream already reached a terminal state.
    fn transition(&self, to: StreamState) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.is_terminal() {
            return false;
        }
        *state = to;
        true
    }

    fn force(&self, to: StreamState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

/// One change stream. `next()` and `close()` may be called from any task.
pub struct ChangeStreamEngine {
    spec: Arc<WatchSpec>,
    shared: Arc<Shared>,
    rx: tokio::sync::Mutex<mpsc::Receiver<StreamItem>>,
    /// The sender, until the worker is started with it.
    unstarted: Mutex<Option<mpsc::Sender<StreamItem>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl ChangeStreamEngine {
    pub fn new(spec: WatchSpec) -> Self {
        let (tx, rx) = mpsc::channel(1);
        ChangeStreamEngine {
            spec: Arc::new(spec),
            shared: Arc::new(Shared {
                state: Mutex::new(StreamState::Idle),
                cancel: CancellationToken::new(),
            }),
            rx: tokio::sync::Mutex::new(rx),
            unstarted: Mutex::new(Some(tx)),
            worker: Mutex::new(None),
        }
    }

    pub fn spec(&self) -> &WatchSpec {
        &self.spec
    }

    pub fn state(&self) -> StreamState {
        self.shared.state()
    }

    /// The next item. Must run inside a Tokio runtime (the worker is spawned on it).
    pub async fn next(&self) -> StreamItem {
        self.start_worker();
        let mut rx = self.rx.lock().await;
        if matches!(self.state(), StreamState::Closing | StreamState::Closed) {
            return StreamItem::Ended(EndReason::Closed);
        }
        match rx.recv().await {
            Some(item) => item,
            None => match self.state() {
                StreamState::Closing | StreamState::Closed | StreamState::Failed => {
                    StreamItem::Ended(EndReason::Closed)
                }
                // The worker vanished without saying why: only a panic does that. Never
                // let that look like a clean end.
                _ => {
                    self.shared.force(StreamState::Failed);
                    StreamItem::Failed(EngineError::new(
                        ErrorCode::ClientError,
                        "internal error: the change stream worker stopped unexpectedly",
                    ))
                }
            },
        }
    }

    /// Forbids re-opens, cancels a pending backoff or in-flight command, kills the
    /// cursor, and waits for the worker to finish. Idempotent.
    pub async fn close(&self) {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            if !matches!(*state, StreamState::Closed | StreamState::Failed) {
                *state = StreamState::Closing;
            }
        }
        self.shared.cancel.cancel();
        drop(self.take_unstarted());
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(worker) = worker {
            // The worker only ends by itself; a panic inside it is already reported by
            // `next()`, so its JoinError carries nothing more to say here.
            let _ = worker.await;
        }
        self.shared.transition_closed();
    }

    fn take_unstarted(&self) -> Option<mpsc::Sender<StreamItem>> {
        self.unstarted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn start_worker(&self) {
        let Some(tx) = self.take_unstarted() else {
            return;
        };
        if !self.shared.transition(StreamState::Opening) {
            return;
        }
        let worker = Worker {
            spec: self.spec.clone(),
            shared: self.shared.clone(),
            tx,
            resume: ResumeState::new(&self.spec),
            outage: None,
            invalidated: false,
        };
        let handle = tokio::spawn(worker.run());
        *self.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }
}

impl Shared {
    fn transition_closed(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *state != StreamState::Failed {
            *state = StreamState::Closed;
        }
    }
}

impl Drop for ChangeStreamEngine {
    /// A stream dropped without `close()` (e.g. garbage-collected in JS) must not leave a
    /// worker re-opening forever.
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// The current outage: consecutive failures since the last delivered progress.
struct Outage {
    since: Instant,
    failures: u32,
}

enum Flow {
    Reopen,
    Stop,
}

struct Worker {
    spec: Arc<WatchSpec>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<StreamItem>,
    resume: ResumeState,
    outage: Option<Outage>,
    invalidated: bool,
}

impl Worker {
    async fn run(mut self) {
        let client = loop {
            match self.or_cancel(client_for(&self.spec.uri)).await {
                None => return,
                Some(Ok(client)) => break client,
                Some(Err(e)) => {
                    if !self.recover(e).await {
                        return;
                    }
                }
            }
        };
        loop {
            if self.shared.state().is_terminal() {
                return;
            }
            let start = choose_start(&self.spec, &self.resume);
            let opened = self
                .or_cancel(open_cursor(&client, &self.spec, &start))
                .await;
            let flow = match opened {
                None => Flow::Stop,
                Some(Ok(cursor)) => self.pump(cursor).await,
                Some(Err(e)) => self.reopen_after(e).await,
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    /// Reads batches from one cursor until it fails, ends, or the stream closes. The
    /// cursor is dropped on return, which kills it on the server.
    async fn pump(&mut self, mut cursor: RawBatchCursor) -> Flow {
        let mut first_reply = true;
        loop {
            // Reserve the slot BEFORE reading: at most one batch waits for the consumer.
            let Some(Ok(permit)) = self.or_cancel(self.tx.clone().reserve_owned()).await else {
                return Flow::Stop;
            };
            let Some(next) = self.or_cancel(cursor.next()).await else {
                return Flow::Stop;
            };
            let reply = match next {
                Some(Ok(reply)) => reply,
                Some(Err(e)) => {
                    drop(permit);
                    drop(cursor);
                    return self.reopen_after(e).await;
                }
                None if self.invalidated => {
                    self.shared.force(StreamState::Closed);
                    permit.send(StreamItem::Ended(EndReason::Invalidated));
                    return Flow::Stop;
                }
                None => {
                    drop(permit);
                    let err = EngineError {
                        resumable: true,
                        ..EngineError::new(
                            ErrorCode::Network,
                            "the server closed the change stream cursor",
                        )
                    };
                    return if self.recover(err).await {
                        Flow::Reopen
                    } else {
                        Flow::Stop
                    };
                }
            };
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
            let advanced = self.resume.record_batch(
                parsed.count,
                parsed.last_event_id.clone(),
                parsed.post_batch_token.clone(),
            );
            self.invalidated = parsed.invalidated;
            if !self.shared.transition(StreamState::Streaming) {
                return Flow::Stop;
            }
            if !advanced {
                continue;
            }
            let mut permit = permit;
            // The outage ends on real progress: an event, or a getMore that moved the
            // position. A successful `aggregate` alone proves little (the next getMore may
            // fail again), so its reply does not reset the backoff.
            let progressed = parsed.count > 0 || !is_open_reply;
            if let Some(outage) = self.outage.take_if(|_| progressed) {
                tracing::info!(
                    attempts = outage.failures,
                    downtime_ms = outage.since.elapsed().as_millis() as u64,
                    "change stream resumed"
                );
                let tx = permit.send(StreamItem::Resumed {
                    attempts: outage.failures,
                    downtime: outage.since.elapsed(),
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
                last_cluster_time: parsed.last_cluster_time,
            }));
        }
    }

    async fn reopen_after(&mut self, e: mongodb::error::Error) -> Flow {
        if self.recover(EngineError::from_driver(&e)).await {
            Flow::Reopen
        } else {
            Flow::Stop
        }
    }

    /// After a failure: fail the stream if the error is fatal or retries ran out, else
    /// announce and wait out the backoff. Returns whether to try again.
    async fn recover(&mut self, error: EngineError) -> bool {
        if !error.resumable {
            self.fail(error).await;
            return false;
        }
        let outage = self.outage.get_or_insert_with(|| Outage {
            since: Instant::now(),
            failures: 0,
        });
        outage.failures += 1;
        let attempt = outage.failures;
        if !self.spec.backoff.allows(attempt) {
            let gave_up = EngineError {
                code: ErrorCode::RetriesExhausted,
                message: format!(
                    "gave up after {} failed attempts to resume; last error: {}",
                    attempt, error.message
                ),
                resumable: false,
                ..error
            };
            self.fail(gave_up).await;
            return false;
        }
        let delay = self.spec.backoff.delay(attempt);
        tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, error = %error, "change stream reconnecting");
        if !self
            .shared
            .transition(StreamState::Reconnecting { attempt })
        {
            return false;
        }
        let announced = self.or_cancel(self.tx.send(StreamItem::Reconnecting {
            attempt,
            delay,
            error,
        }));
        if !matches!(announced.await, Some(Ok(()))) {
            return false;
        }
        self.or_cancel(tokio::time::sleep(delay)).await.is_some()
            && !self.shared.state().is_terminal()
    }

    async fn fail(&mut self, error: EngineError) {
        tracing::error!(error = %error, "change stream failed");
        if !self.shared.transition(StreamState::Failed) {
            return;
        }
        // The consumer learns of the failure from this item; if it is gone, nobody waits.
        let _ = self
            .or_cancel(self.tx.send(StreamItem::Failed(error)))
            .await;
    }

    /// Runs `f` unless the stream is closed first; `None` means "closed".
    async fn or_cancel<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = self.shared.cancel.cancelled() => None,
            out = f => Some(out),
        }
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
