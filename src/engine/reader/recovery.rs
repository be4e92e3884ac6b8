//! How a reader's run loop recovers and tells its consumer about it: backoff
//! announcements, the final error, stalls — and how it waits without outliving a close.
//! One outage count per run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::item::ReaderItem;
use super::outage::{OutageTracker, Recovery, Retry};
use super::status::ReaderStatus;
use crate::engine::backoff::BackoffPolicy;
use crate::engine::client_pool::{client_for, ClientLease};
use crate::engine::durable::checkpoint::{Checkpointer, STORE_GIVE_UP_AFTER};
use crate::engine::durable::position::Position;
use crate::engine::errors::{EngineError, ErrorCode};

pub(crate) struct Recoverer {
    /// What is re-opened, for logs and messages ("change stream", "cursor").
    what: &'static str,
    status: Arc<ReaderStatus>,
    tx: mpsc::Sender<ReaderItem>,
    /// Cancelled when the run must stop (`stop()`, and `close()`, its parent).
    cancel: CancellationToken,
    /// The reader's `backoff` option: every retry here waits by it.
    policy: BackoffPolicy,
    outage: OutageTracker,
}

impl Recoverer {
    pub(crate) fn new(
        what: &'static str,
        status: Arc<ReaderStatus>,
        tx: mpsc::Sender<ReaderItem>,
        cancel: CancellationToken,
        policy: BackoffPolicy,
    ) -> Self {
        Recoverer {
            what,
            status,
            tx,
            cancel,
            policy,
            outage: OutageTracker::default(),
        }
    }

    /// Cancelled when the run must stop.
    pub(crate) fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Runs `f` unless the run is stopped first; `None` means "stop".
    pub(crate) async fn or_cancel<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => None,
            out = f => Some(out),
        }
    }

    /// Sends `item` unless stopped first; false when it could not be delivered.
    pub(crate) async fn send(&self, item: ReaderItem) -> bool {
        matches!(self.or_cancel(self.tx.send(item)).await, Some(Ok(())))
    }

    /// Real progress reached the consumer: ends the outage, if one was in progress.
    pub(crate) fn progress(&mut self) -> Option<Recovery> {
        let recovery = self.outage.progress();
        if let Some(r) = &recovery {
            self.status.record_recovery(r.downtime);
        }
        recovery
    }

    /// After a failure: fail if the error is fatal or retries ran out, else announce and
    /// wait out the backoff. Returns whether to try again.
    pub(crate) async fn recover(&mut self, error: EngineError) -> bool {
        let (attempt, delay, error) = match self.outage.failure(error, &self.policy, self.what) {
            Retry::GiveUp(error) => {
                self.fail(error).await;
                return false;
            }
            Retry::After {
                attempt,
                delay,
                error,
            } => (attempt, delay, error),
        };
        tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, error = %error, "{} reconnecting", self.what);
        if !self.status.record_failure(&error, attempt, delay) {
            return false;
        }
        let item = ReaderItem::Reconnecting {
            attempt,
            delay,
            error,
        };
        if !self.send(item).await {
            return false;
        }
        self.or_cancel(tokio::time::sleep(delay)).await.is_some()
            && !self.status.state().is_terminal()
    }

    /// No reply (or no progress) for `silent`: announce the stall, then back off like any
    /// resumable failure. Returns whether to re-open.
    pub(crate) async fn stalled(&mut self, silent: Duration) -> bool {
        tracing::warn!(
            silent_ms = silent.as_millis() as u64,
            "{} stalled",
            self.what
        );
        self.status.record_stall();
        if !self.send(ReaderItem::Stalled { silent }).await {
            return false;
        }
        let error = EngineError::resumable(
            ErrorCode::Stalled,
            format!(
                "the {} made no progress for {} ms",
                self.what,
                silent.as_millis()
            ),
        );
        self.recover(error).await
    }

    /// Fails the reader with `error` (once); the consumer learns of it from the item.
    pub(crate) async fn fail(&self, error: EngineError) {
        tracing::error!(error = %error, "{} failed", self.what);
        if !self.status.fail(&error) {
            return;
        }
        // If the consumer is gone, nobody waits for this item.
        let _ = self.send(ReaderItem::Failed(error)).await;
    }

    /// The shared client for `uri`, retried like a re-open (a bad connection string fails
    /// at once). `None`: the run must stop (failed or closed).
    pub(crate) async fn client(&mut self, uri: &str) -> Option<ClientLease> {
        loop {
            match self.or_cancel(client_for(uri)).await? {
                Ok(client) => return Some(client),
                Err(e) => {
                    if !self.recover(e).await {
                        return None;
                    }
                }
            }
        }
    }

    /// The stored position, retried like a re-open while the store is down (for up to
    /// STORE_GIVE_UP_AFTER). `None`: the run must stop (failed or closed).
    pub(crate) async fn restore(&mut self, ck: &Checkpointer) -> Option<Option<Position>> {
        let started = Instant::now();
        loop {
            match self.or_cancel(ck.load_position()).await? {
                Ok(position) => return Some(position),
                Err(e) if e.resumable && started.elapsed() < STORE_GIVE_UP_AFTER => {
                    if !self.recover(e).await {
                        return None;
                    }
                }
                Err(e) => {
                    self.fail(EngineError {
                        resumable: false,
                        ..e
                    })
                    .await;
                    return None;
                }
            }
        }
    }
}
