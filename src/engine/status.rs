//! The stream's state machine and health counters, shared by the engine handle and its
//! worker behind one mutex.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mongodb::bson::{RawDocument, Timestamp};
use tokio_util::sync::CancellationToken;

use super::errors::EngineError;

/// The stream's lifecycle. Only `close()` moves it to `Closing`/`Closed`, and nothing
/// moves it out of a terminal state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamState {
    /// Created; the worker starts on the first `next()`.
    #[default]
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
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StreamState::Closing | StreamState::Closed | StreamState::Failed
        )
    }

    /// The public names of `health().state`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Idle | StreamState::Opening => "starting",
            StreamState::Streaming => "streaming",
            StreamState::Reconnecting { .. } => "reconnecting",
            StreamState::Closing | StreamState::Closed => "closed",
            StreamState::Failed => "failed",
        }
    }
}

/// A point-in-time view of the stream, for `health()`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub state: StreamState,
    /// When the position last advanced (events or postBatchResumeToken).
    pub last_token_at: Option<SystemTime>,
    /// Cluster time of the position, when known.
    pub position_time: Option<Timestamp>,
    /// When the server last answered a getMore/aggregate.
    pub last_reply_at: Option<SystemTime>,
    /// Resumable failures since the stream started.
    pub reconnects: u64,
    /// The delay being waited out now, if reconnecting.
    pub current_backoff: Option<Duration>,
    pub last_error: Option<EngineError>,
    /// Events read from the server (handed to the consumer or waiting in the one-batch
    /// prefetch slot).
    pub events_read: u64,
}

impl Health {
    /// Wall clock minus the cluster time of the position (0 when the clocks disagree).
    pub fn lag(&self, now: SystemTime) -> Option<Duration> {
        let ts = self.position_time?;
        let position = UNIX_EPOCH + Duration::from_secs(ts.time as u64);
        Some(now.duration_since(position).unwrap_or(Duration::ZERO))
    }
}

pub(crate) struct Shared {
    health: Mutex<Health>,
    pub(crate) cancel: CancellationToken,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Shared {
            health: Mutex::new(Health::default()),
            cancel: CancellationToken::new(),
        }
    }

    /// A poisoned lock only means a thread panicked mid-update of plain counters; they
    /// are still usable, and a panic is reported elsewhere.
    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn state(&self) -> StreamState {
        self.lock().state
    }

    pub(crate) fn snapshot(&self) -> Health {
        self.lock().clone()
    }

    /// Moves to `to` unless the stream already reached a terminal state.
    pub(crate) fn transition(&self, to: StreamState) -> bool {
        let mut health = self.lock();
        if health.state.is_terminal() {
            return false;
        }
        health.state = to;
        if !matches!(to, StreamState::Reconnecting { .. }) {
            health.current_backoff = None;
        }
        true
    }

    /// `close()`: forbids every later transition but the final `Closed`.
    pub(crate) fn begin_close(&self) {
        let mut health = self.lock();
        if !matches!(health.state, StreamState::Closed | StreamState::Failed) {
            health.state = StreamState::Closing;
        }
        health.current_backoff = None;
    }

    pub(crate) fn finish_close(&self) {
        let mut health = self.lock();
        if health.state != StreamState::Failed {
            health.state = StreamState::Closed;
        }
    }

    pub(crate) fn fail(&self, error: &EngineError) -> bool {
        let mut health = self.lock();
        if health.state.is_terminal() {
            return false;
        }
        health.state = StreamState::Failed;
        health.last_error = Some(error.clone());
        true
    }

    pub(crate) fn end(&self) {
        let mut health = self.lock();
        if !health.state.is_terminal() {
            health.state = StreamState::Closed;
        }
    }

    pub(crate) fn record_failure(
        &self,
        error: &EngineError,
        attempt: u32,
        delay: Duration,
    ) -> bool {
        let mut health = self.lock();
        if health.state.is_terminal() {
            return false;
        }
        health.state = StreamState::Reconnecting { attempt };
        health.reconnects += 1;
        health.current_backoff = Some(delay);
        health.last_error = Some(error.clone());
        true
    }

    pub(crate) fn record_reply(&self) {
        self.lock().last_reply_at = Some(SystemTime::now());
    }

    /// The position moved; `time` is its cluster time when known.
    pub(crate) fn record_progress(&self, events: usize, time: Option<Timestamp>) {
        let mut health = self.lock();
        health.last_token_at = Some(SystemTime::now());
        health.events_read += events as u64;
        if time.is_some() {
            health.position_time = time;
        }
    }
}

/// The cluster time inside a real MongoDB resume token (KeyString: `_data` hex starting
/// with type byte 0x82, then 4-byte seconds and 4-byte increment, big-endian). Other
/// servers' tokens are opaque: `None`, never an error.
pub fn keystring_token_time(token: &RawDocument) -> Option<Timestamp> {
    let data = token.get_str("_data").ok()?;
    let hex = data.get(..18)?;
    if !hex.starts_with("82") {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok();
    let mut bytes = [0u8; 8];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = byte(i + 1)?;
    }
    Some(Timestamp {
        time: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        increment: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, RawDocumentBuf};

    fn raw(d: mongodb::bson::Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    #[test]
    fn decodes_real_keystring_tokens() {
        // 0x82, seconds 0x65A1B2C3, increment 0x00000007, then the rest of a real token.
        let token = raw(doc! {"_data": "8265A1B2C3000000072B022C0100296E5A1004"});
        assert_eq!(
            keystring_token_time(&token),
            Some(Timestamp {
                time: 0x65A1_B2C3,
                increment: 7
            })
        );
    }

    #[test]
    fn other_token_formats_are_opaque() {
        for t in [
            doc! {"_data": "2a00000010730002000000117400080000002e3a026b"},
            doc! {"_data": "82zz"},
            doc! {"_data": 5},
            doc! {},
        ] {
            assert_eq!(keystring_token_time(&raw(t)), None);
        }
    }

    #[test]
    fn lag_is_wall_clock_minus_position_time() {
        let health = Health {
            position_time: Some(Timestamp {
                time: 1000,
                increment: 1,
            }),
            ..Health::default()
        };
        let now = UNIX_EPOCH + Duration::from_secs(1060);
        assert_eq!(health.lag(now), Some(Duration::from_secs(60)));
        assert_eq!(
            health.lag(UNIX_EPOCH + Duration::from_secs(10)),
            Some(Duration::ZERO)
        );
        assert_eq!(Health::default().lag(now), None);
    }

    #[test]
    fn terminal_states_stick() {
        let shared = Shared::new();
        assert!(shared.transition(StreamState::Streaming));
        shared.begin_close();
        assert!(!shared.transition(StreamState::Streaming));
        assert!(!shared.record_failure(
            &EngineError::new(super::super::ErrorCode::Network, "x"),
            1,
            Duration::ZERO
        ));
        shared.finish_close();
        assert_eq!(shared.state(), StreamState::Closed);
    }
}
