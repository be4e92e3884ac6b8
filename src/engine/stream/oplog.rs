//! Oplog headroom: how far the stream's position is from falling off the oplog.

use std::cmp::Ordering;

use mongodb::bson::{doc, Document, Timestamp};
use mongodb::Client;

use crate::engine::errors::EngineError;

/// What the server says about its oplog, and where the position stands in it.
#[derive(Debug, Clone, PartialEq)]
pub enum OplogWindow {
    Known {
        oldest: Timestamp,
        newest: Timestamp,
        /// Cluster time of the stream's position, when known.
        position: Option<Timestamp>,
    },
    /// The server cannot tell (no access to `local.oplog.rs`, not a replica set, …).
    Unknown { reason: String },
}

impl OplogWindow {
    /// Seconds from the oldest entry to the newest.
    pub fn window_secs(&self) -> Option<i64> {
        match self {
            OplogWindow::Known { oldest, newest, .. } => {
                Some(newest.time as i64 - oldest.time as i64)
            }
            OplogWindow::Unknown { .. } => None,
        }
    }

    /// Seconds from the oldest entry to the position (negative: already fallen off).
    pub fn headroom_secs(&self) -> Option<i64> {
        match self {
            OplogWindow::Known {
                oldest,
                position: Some(p),
                ..
            } => Some(p.time as i64 - oldest.time as i64),
            _ => None,
        }
    }

    /// The position is older than the oldest entry: a re-open would fail with 286.
    pub fn lost(&self) -> Option<bool> {
        match self {
            OplogWindow::Known {
                oldest,
                position: Some(p),
                ..
            } => Some(compare(p, oldest) == Ordering::Less),
            _ => None,
        }
    }

    /// Whether the position is within `fraction` of the window from the oldest end.
    pub fn is_low(&self, fraction: f64) -> Option<bool> {
        if self.lost()? {
            return Some(true);
        }
        let (headroom, window) = (self.headroom_secs()?, self.window_secs()?);
        Some(window > 0 && (headroom as f64) <= fraction * window as f64)
    }
}

fn compare(a: &Timestamp, b: &Timestamp) -> Ordering {
    (a.time, a.increment).cmp(&(b.time, b.increment))
}

/// Reads the first and last oplog entries (`$natural` order: no index needed).
pub async fn read_window(
    client: &Client,
    position: Option<Timestamp>,
) -> Result<OplogWindow, EngineError> {
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let end = |direction: i32| {
        let oplog = oplog.clone();
        async move {
            oplog
                .find_one(doc! {})
                .sort(doc! {"$natural": direction})
                .projection(doc! {"ts": 1, "_id": 0})
                .await
        }
    };
    let (first, last) = match tokio::try_join!(end(1), end(-1)) {
        Ok(pair) => pair,
        Err(e) => {
            let err = EngineError::from_driver(&e);
            if err.resumable {
                return Err(err);
            }
            return Ok(OplogWindow::Unknown {
                reason: format!("cannot read local.oplog.rs: {}", err.message),
            });
        }
    };
    let ts = |d: Option<Document>| d.and_then(|d| d.get_timestamp("ts").ok());
    Ok(match (ts(first), ts(last)) {
        (Some(oldest), Some(newest)) => OplogWindow::Known {
            oldest,
            newest,
            position,
        },
        _ => OplogWindow::Unknown {
            reason: "local.oplog.rs is empty or has no timestamps".into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(time: u32, increment: u32) -> Timestamp {
        Timestamp { time, increment }
    }

    #[test]
    fn headroom_and_low() {
        let w = OplogWindow::Known {
            oldest: ts(100, 1),
            newest: ts(200, 1),
            position: Some(ts(150, 3)),
        };
        assert_eq!(w.window_secs(), Some(100));
        assert_eq!(w.headroom_secs(), Some(50));
        assert_eq!(w.lost(), Some(false));
        assert_eq!(w.is_low(0.2), Some(false));
        assert_eq!(w.is_low(0.5), Some(true));
    }

    #[test]
    fn fallen_off_is_lost_and_low() {
        let w = OplogWindow::Known {
            oldest: ts(100, 5),
            newest: ts(100, 9),
            position: Some(ts(100, 2)),
        };
        assert_eq!(w.lost(), Some(true));
        assert_eq!(w.is_low(0.0), Some(true));
    }

    #[test]
    fn unknown_says_so() {
        let w = OplogWindow::Unknown { reason: "x".into() };
        assert_eq!(w.is_low(0.5), None);
        let no_position = OplogWindow::Known {
            oldest: ts(1, 1),
            newest: ts(2, 1),
            position: None,
        };
        assert_eq!(no_position.headroom_secs(), None);
        assert_eq!(no_position.is_low(0.5), None);
    }
}
