//! A restartable long read (a huge `find`, or a tailable cursor on a capped collection): a
//! `reader::Source` positioned by a unique, ordered key instead of a resume token. Re-opens
//! continue after the last key received; everything else is the reader runtime's.

mod spec;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Bson, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::options::CursorType;
use mongodb::raw_batch_cursor::RawBatchCursor;
use mongodb::Client;

use crate::engine::durable::position::Position;
use crate::engine::errors::{EngineError, ErrorCode, Rules};
use crate::engine::reader::reply::{doc_at, read_docs};
use crate::engine::reader::source::{AfterLoss, Exhausted, ReadBatch, Reply, Source};
use crate::engine::reader::{EndReason, Reader, ReaderItem};
pub use spec::{key_of, CursorSpec, PositionLostPolicy};

/// One restartable cursor.
pub type CursorEngine = Reader<CursorSource>;

/// The server's code for a tailable cursor whose position was overwritten.
pub const CAPPED_POSITION_LOST: i32 = 136;

pub struct CursorSource {
    spec: Arc<CursorSpec>,
    /// The key of the last document sent to the consumer: re-opens continue after it.
    last_key: Option<Bson>,
    /// The last key whose loss was already reported (a lost position is reported once).
    lost_reported_for: Option<Bson>,
}

impl CursorSource {
    fn key_of(&self, doc: &RawDocument) -> Result<Bson, EngineError> {
        let key = &self.spec.key;
        key_of(doc, key).ok_or_else(|| {
            EngineError::new(
                ErrorCode::InvalidOption,
                format!("a document has no key field \"{key}\"; the key must be present in every document"),
            )
        })
    }
}

impl Source for CursorSource {
    type Spec = CursorSpec;
    const WHAT: &'static str = "cursor";

    fn new(spec: Arc<CursorSpec>) -> Self {
        CursorSource {
            last_key: spec.last_key.clone(),
            spec,
            lost_reported_for: None,
        }
    }

    /// Not a change stream: the server does not label its errors, the code list decides.
    fn rules(_wire_version: Option<i32>) -> Rules {
        Rules::Generic
    }

    fn await_time(&self) -> Duration {
        self.spec.max_await_time.unwrap_or(Duration::ZERO)
    }

    /// A `lastKey` (a `restart()` state) wins over a stored position.
    fn has_start(&self) -> bool {
        self.last_key.is_some()
    }

    fn restore(&mut self, position: Position) -> Option<Timestamp> {
        // load_position refuses a change stream's record.
        if let Position::Cursor { last_key } = position {
            self.last_key = Some(last_key);
        }
        None
    }

    fn open<'a>(
        &'a mut self,
        client: &'a Client,
    ) -> impl Future<Output = Result<RawBatchCursor, mongodb::error::Error>> + Send + 'a {
        tracing::debug!(resuming = self.last_key.is_some(), "opening the cursor");
        open_cursor(client, &self.spec, self.last_key.as_ref())
    }

    /// A tailable read re-opened after its last key: if the capped collection no longer
    /// holds that document, documents after it may have been overwritten while nothing was
    /// reading (mongod reports that only for a live cursor). Checked after the open, so a
    /// document still there proves nothing after it was lost before the new cursor began.
    async fn check_open(
        &mut self,
        client: &Client,
    ) -> Result<Option<EngineError>, mongodb::error::Error> {
        let Some(last) = self.last_key.clone().filter(|_| self.spec.tailable) else {
            return Ok(None);
        };
        if self.lost_reported_for.as_ref() == Some(&last) {
            return Ok(None);
        }
        let found = client
            .database(&self.spec.db)
            .collection::<RawDocumentBuf>(&self.spec.collection)
            .find_one(doc! { self.spec.key.as_str(): last })
            .projection(doc! { "_id": 1 })
            .into_future()
            .await?;
        if found.is_some() {
            return Ok(None);
        }
        let mut error = EngineError::new(
            ErrorCode::ServerError,
            "the capped collection no longer holds the last document read: documents after it \
             may have been overwritten while the cursor was not reading",
        );
        error.server_code = Some(CAPPED_POSITION_LOST);
        error.code_name = Some("CappedPositionLost".to_string());
        Ok(Some(error))
    }

    fn on_reply(&mut self, reply: &RawDocument, opening: bool) -> Result<Reply, EngineError> {
        let docs = read_docs(reply, "find")?;
        let progress = docs.count > 0 || !opening;
        let Some(last) = docs.last else {
            return Ok(Reply::Nothing { progress });
        };
        self.last_key = Some(self.key_of(last)?);
        Ok(Reply::Batch {
            progress,
            batch: ReadBatch {
                docs: docs.bytes,
                count: docs.count,
                end_token: None,
                position_time: None,
            },
        })
    }

    fn on_exhausted(&mut self) -> Exhausted {
        if self.spec.tailable {
            // A dead tailable cursor (nothing matched yet, or the server let it go): wait a
            // little, then re-issue after the last key.
            tracing::debug!("tailable cursor is dead; re-issuing it");
            return Exhausted::Reopen(self.spec.tail_retry);
        }
        Exhausted::End(EndReason::Exhausted)
    }

    fn is_loss(&self, error: &EngineError) -> bool {
        error.server_code == Some(CAPPED_POSITION_LOST)
    }

    /// Documents after the last key were overwritten before they were read: never silent.
    async fn loss_item(
        &mut self,
        error: &EngineError,
        _client: &Client,
        _position_time: Option<Timestamp>,
    ) -> ReaderItem {
        self.lost_reported_for = self.last_key.clone();
        ReaderItem::PositionLost {
            error: error.clone(),
        }
    }

    fn after_loss(&mut self) -> AfterLoss {
        match self.spec.on_position_lost {
            PositionLostPolicy::Error => AfterLoss::Fail,
            // A new find after the last key starts at the oldest document still there.
            PositionLostPolicy::RestartFromOldest => AfterLoss::Continue,
        }
    }

    /// The key of the last processed document is the position.
    fn position_at(
        spec: &CursorSpec,
        batch: &ReadBatch,
        n: usize,
    ) -> Result<Option<Position>, EngineError> {
        if n == 0 {
            return Ok(None);
        }
        let doc = doc_at(&batch.docs, n - 1)?;
        let last_key = key_of(doc, &spec.key).ok_or_else(|| {
            EngineError::new(
                ErrorCode::ClientError,
                format!("commit: the document has no key field \"{}\"", spec.key),
            )
        })?;
        Ok(Some(Position::Cursor { last_key }))
    }
}

fn open_cursor<'a>(
    client: &'a Client,
    spec: &'a CursorSpec,
    last_key: Option<&Bson>,
) -> impl Future<Output = Result<RawBatchCursor, mongodb::error::Error>> + Send + 'a {
    let command = RawDocumentBuf::from_document(&spec.find_command(last_key));
    async move {
        let db = client.database(&spec.db);
        let mut action = db.run_raw_cursor_command(command?);
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
}
