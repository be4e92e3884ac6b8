//! Walking a cursor reply (`firstBatch`/`nextBatch`) without parsing its documents: they
//! are copied once into one buffer that the native layer hands to JS whole.

use mongodb::bson::{RawBsonRef, RawDocument};

use crate::engine::errors::{EngineError, ErrorCode};

/// The documents of one reply.
pub struct Docs<'a> {
    /// `count` BSON documents back to back.
    pub bytes: Vec<u8>,
    pub count: usize,
    /// The last document, for the reader's position.
    pub last: Option<&'a RawDocument>,
}

/// Copies the documents of `reply` (the answer to `what`: "change stream", "find").
pub fn read_docs<'a>(reply: &'a RawDocument, what: &str) -> Result<Docs<'a>, EngineError> {
    let bad = |missing: &str| {
        EngineError::new(
            ErrorCode::ClientError,
            format!("the server sent a {what} reply without {missing}"),
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
        last: None,
    };
    for item in docs {
        let RawBsonRef::Document(d) = item.map_err(|_| bad("well-formed documents"))? else {
            return Err(bad("documents"));
        };
        out.bytes.extend_from_slice(d.as_bytes());
        out.count += 1;
        out.last = Some(d);
    }
    Ok(out)
}

/// The document at `index` of `count` documents back to back in `bytes`.
pub fn doc_at(bytes: &[u8], index: usize) -> Result<&RawDocument, EngineError> {
    let bad = || EngineError::new(ErrorCode::ClientError, "a batch is not well-formed BSON");
    let mut offset = 0usize;
    for i in 0..=index {
        let len_bytes: [u8; 4] = bytes
            .get(offset..offset + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        let len = i32::from_le_bytes(len_bytes).max(0) as usize;
        if i == index {
            let doc = bytes.get(offset..offset + len).ok_or_else(bad)?;
            return RawDocument::from_bytes(doc).map_err(|_| bad());
        }
        offset += len;
    }
    Err(bad())
}
