//! The `positions` CLI's native functions: list, rewind and reset stored positions
//! (`engine::position_tools`). Requests and answers are BSON documents (a record's token is
//! any document); an answer is `{ error: { code, message } }` when the engine refused or
//! failed. Nothing answered holds a connection string.

use mongodb::bson::{doc, Bson, Document};
use napi::bindgen_prelude::Buffer;
use napi::Result;
use napi_derive::napi;

use super::args::spec_document;
use crate::engine::client_pool;
use crate::engine::errors::{EngineError, ErrorCode};
use crate::engine::position_tools::{
    list_positions, oplog_window, reset, rewind, MoveRequest, PositionChange, RewindTarget,
    StoreLocation,
};
use crate::engine::stream::oplog::OplogWindow;

fn bad_request(what: &str) -> EngineError {
    EngineError::new(
        ErrorCode::InvalidOption,
        format!("positions request: {what}"),
    )
}

fn text(d: &Document, field: &str) -> std::result::Result<String, EngineError> {
    d.get_str(field)
        .map(str::to_string)
        .map_err(|_| bad_request(&format!("\"{field}\" must be a string")))
}

/// `store: { type: 'file', path } | { type: 'mongodb', uri, db, collection }`.
fn store_location(request: &Document) -> std::result::Result<StoreLocation, EngineError> {
    let store = request
        .get_document("store")
        .map_err(|_| bad_request("\"store\" must be a document"))?;
    match store.get_str("type") {
        Ok("file") => Ok(StoreLocation::File {
            path: text(store, "path")?,
        }),
        Ok("mongodb") => Ok(StoreLocation::MongoDb {
            uri: text(store, "uri")?,
            db: text(store, "db")?,
            collection: text(store, "collection")?,
        }),
        _ => Err(bad_request("store.type must be 'file' or 'mongodb'")),
    }
}

fn move_request(request: &Document) -> std::result::Result<MoveRequest, EngineError> {
    let leases = match request.get_document("leases") {
        Ok(l) => Some((text(l, "db")?, text(l, "collection")?)),
        Err(_) => None,
    };
    Ok(MoveRequest {
        store: store_location(request)?,
        name: text(request, "name")?,
        uri: request.get_str("uri").ok().map(str::to_string),
        leases,
        force: request.get_bool("force").unwrap_or(false),
        dry_run: request.get_bool("dryRun").unwrap_or(false),
    })
}

fn encode(answer: &Document) -> Result<Buffer> {
    let mut bytes = Vec::new();
    answer
        .to_writer(&mut bytes)
        .map_err(|e| napi::Error::from_reason(format!("cannot encode the answer: {e}")))?;
    Ok(bytes.into())
}

fn answer(result: std::result::Result<Document, EngineError>) -> Result<Buffer> {
    encode(&match result {
        Ok(d) => d,
        Err(e) => doc! {"error": {"code": e.code.as_str(), "message": e.message}},
    })
}

fn window_document(window: std::result::Result<OplogWindow, EngineError>) -> Document {
    match window {
        Ok(OplogWindow::Known { oldest, newest, .. }) => doc! {"oldest": oldest, "newest": newest},
        Ok(OplogWindow::Unknown { reason }) => doc! {"reason": reason},
        Err(e) => doc! {"reason": e.message},
    }
}

async fn list(request: Document) -> std::result::Result<Document, EngineError> {
    let store = store_location(&request)?;
    let name = request.get_str("name").ok();
    let positions = list_positions(&store, name).await?;
    let mut out = doc! {
        "store": store.describe(),
        "positions": positions
            .into_iter()
            .map(|p| Bson::Document(doc! {"name": p.name, "record": p.record}))
            .collect::<Vec<_>>(),
    };
    let deployment = match &store {
        StoreLocation::MongoDb { uri, .. } => Some(uri.clone()),
        StoreLocation::File { .. } => request.get_str("uri").ok().map(str::to_string),
    };
    if let Some(uri) = deployment {
        out.insert("oplog", window_document(oplog_window(&uri).await));
    }
    Ok(out)
}

fn change_document(change: PositionChange) -> Document {
    let mut out = doc! {
        "before": change.before.map_or(Bson::Null, Bson::Document),
        "after": change.after.map_or(Bson::Null, Bson::Document),
    };
    if let Some(lease) = change.lease {
        out.insert("lease", lease.to_document());
    }
    if let Some(epoch) = change.fenced_epoch {
        out.insert("fencedEpoch", epoch);
    }
    out
}

async fn rewind_request(request: Document) -> std::result::Result<Document, EngineError> {
    let target = request
        .get_document("to")
        .map_err(|_| bad_request("\"to\" must be a document"))?;
    let target = match (target.get_timestamp("time"), target.get_document("token")) {
        (Ok(time), _) => RewindTarget::Time(time),
        (_, Ok(token)) => RewindTarget::Token(token.clone()),
        _ => {
            return Err(bad_request(
                "\"to\" must be { time: Timestamp } or { token }",
            ))
        }
    };
    let change = rewind(&move_request(&request)?, target).await?;
    Ok(change_document(change))
}

async fn reset_request(request: Document) -> std::result::Result<Document, EngineError> {
    let change = reset(&move_request(&request)?).await?;
    Ok(change_document(change))
}

/// The `positions` CLI's entry points (static methods; no instances).
#[napi]
pub struct NativePositions {}

#[napi]
impl NativePositions {
    /// The stored positions of a store (`{ store, name?, uri? }`): `{ store, positions: [{
    /// name, record }], oplog?: { oldest, newest } | { reason } }`.
    #[napi]
    pub async fn list(request: Buffer) -> Result<Buffer> {
        let request = spec_document(&request)?;
        let result = list(request).await;
        client_pool::settle().await;
        answer(result)
    }

    /// Moves a change stream's stored position (`{ store, name, to: { time } | { token },
    /// uri?, leases?, force?, dryRun? }`): `{ before, after, lease?, fencedEpoch? }`.
    #[napi]
    pub async fn rewind(request: Buffer) -> Result<Buffer> {
        let request = spec_document(&request)?;
        let result = rewind_request(request).await;
        client_pool::settle().await;
        answer(result)
    }

    /// Deletes a stored position (`{ store, name, uri?, leases?, force?, dryRun? }`): `{
    /// before, after: null, lease?, fencedEpoch? }`.
    #[napi]
    pub async fn reset(request: Buffer) -> Result<Buffer> {
        let request = spec_document(&request)?;
        let result = reset_request(request).await;
        client_pool::settle().await;
        answer(result)
    }
}
