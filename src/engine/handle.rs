//! What a change stream and a restartable cursor share as handles: a background worker
//! started on first use, a one-slot channel from it, the optional checkpointer with its
//! task, and an ordered close (worker gone, then the last position stored).

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::checkpoint::{CheckpointPolicy, Checkpointer};
use super::client_pool;
use super::errors::{EngineError, ErrorCode};
use super::position::Owner;
use super::reporter::FailureItem;
use super::spec::Durability;
use super::status::{Shared, StreamState};
use super::store::{open_store, TokenStore};

/// What `recv()` found.
pub(crate) enum Received<I> {
    Item(I),
    /// Closed by the user: whatever is still queued no longer matters.
    Closed,
    /// The worker is gone and everything it sent was received.
    Drained,
}

pub(crate) struct Handle<I> {
    pub(crate) shared: Arc<Shared>,
    rx: tokio::sync::Mutex<mpsc::Receiver<I>>,
    /// The sender, until the worker is started with it.
    unstarted: Mutex<Option<mpsc::Sender<I>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Present for a named reader (a token store).
    pub(crate) checkpointer: Option<Arc<Checkpointer>>,
    checkpoint_task: Mutex<Option<JoinHandle<()>>>,
}

impl<I: FailureItem + 'static> Handle<I> {
    /// `durability`: the reader's name and store, if it has one; `owner` names its records.
    pub(crate) fn new(
        durability: Option<&Durability>,
        owner: impl FnOnce(&str) -> Owner,
        uri: &str,
        custom_store: Option<Arc<dyn TokenStore>>,
    ) -> Result<Self, EngineError> {
        let checkpointer = match durability {
            None => None,
            Some(d) => Some(Arc::new(Checkpointer::new(
                owner(&d.name),
                d.allow_mismatch,
                open_store(&d.store, uri, custom_store)?,
                d.checkpoint.clone(),
            ))),
        };
        let (tx, rx) = mpsc::channel(1);
        Ok(Handle {
            shared: Arc::new(Shared::new()),
            rx: tokio::sync::Mutex::new(rx),
            unstarted: Mutex::new(Some(tx)),
            worker: Mutex::new(None),
            checkpointer,
            checkpoint_task: Mutex::new(None),
        })
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the sender if the worker never started (nothing will be sent).
    pub(crate) fn forget_unstarted(&self) {
        drop(Self::lock(&self.unstarted).take());
    }

    /// Starts the worker `make(tx)` (and the checkpoint task) once; later calls do nothing.
    pub(crate) fn start<F>(
        &self,
        span: impl FnOnce() -> tracing::Span,
        make: impl FnOnce(mpsc::Sender<I>) -> F,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(tx) = Self::lock(&self.unstarted).take() else {
            return;
        };
        if !self.shared.transition(StreamState::Opening) {
            return;
        }
        let span = span();
        if let Some(ck) = &self.checkpointer {
            let task = ck.spawn(self.shared.clone(), tx.clone(), I::failed, span.clone());
            *Self::lock(&self.checkpoint_task) = Some(task);
        }
        *Self::lock(&self.worker) = Some(tokio::spawn(make(tx).instrument(span)));
    }

    /// The next item from the worker. With a token store, waits first while too much
    /// processed progress is unsaved (a store that is down).
    pub(crate) async fn recv(&self) -> Received<I> {
        self.wait_for_room().await;
        let mut rx = self.rx.lock().await;
        // Closed while waiting, or before. (A reader that ended by itself still hands out
        // its last items.)
        if self.shared.cancel.is_cancelled() {
            return Received::Closed;
        }
        match rx.recv().await {
            Some(item) => Received::Item(item),
            None => Received::Drained,
        }
    }

    /// The worker vanished without saying why: only a panic does that. Never let that look
    /// like a clean end.
    pub(crate) fn vanished(&self) -> I {
        let error = EngineError::new(
            ErrorCode::ClientError,
            format!(
                "internal error: the {} worker stopped unexpectedly",
                I::WHAT
            ),
        );
        self.shared.fail(&error);
        I::failed(error)
    }

    /// Forbids re-opens, cancels a pending backoff or in-flight command (the server cursor
    /// is killed), waits for the tasks, then stores the last processed position.
    /// Idempotent. Fails only if that last position could not be stored.
    pub(crate) async fn close(&self) -> Result<(), EngineError> {
        self.shared.begin_close();
        self.shared.cancel.cancel();
        self.forget_unstarted();
        for task in [&self.worker, &self.checkpoint_task] {
            let handle = Self::lock(task).take();
            if let Some(handle) = handle {
                // Tasks only end by themselves; a panic inside the worker is already
                // reported by `recv()`, so a JoinError carries nothing more to say here.
                let _ = handle.await;
            }
        }
        self.shared.finish_close();
        let flushed = match &self.checkpointer {
            Some(ck) => ck.flush().await,
            None => Ok(()),
        };
        client_pool::settle().await;
        flushed
    }

    pub(crate) fn checkpoint_policy(&self) -> Option<&CheckpointPolicy> {
        self.checkpointer.as_ref().map(|c| c.policy())
    }

    /// How many more processed items may be unsaved before `checkpoint.maxUnsavedEvents`
    /// is reached (`u64::MAX` without a token store).
    pub(crate) fn room(&self) -> u64 {
        self.checkpointer.as_ref().map_or(u64::MAX, |c| c.room())
    }

    /// Waits until `room()` is not 0, or the reader is closed.
    pub(crate) async fn wait_for_room(&self) {
        if let Some(ck) = &self.checkpointer {
            tokio::select! {
                _ = ck.wait_for_room() => {},
                _ = self.shared.cancel.cancelled() => {},
            }
        }
    }

    /// Processed items not yet stored (0 without a token store).
    pub(crate) fn pending_checkpoint(&self) -> u64 {
        self.checkpointer.as_ref().map_or(0, |c| c.unsaved_events())
    }
}

impl<I> Drop for Handle<I> {
    /// A reader dropped without `close()` (e.g. garbage-collected in JS) must not leave a
    /// worker re-opening forever.
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}
