//! Reading typed options out of a BSON document (what the native layer receives from
//! JS), with errors that name the option and say what was expected.

use mongodb::bson::{Bson, Document};

use super::errors::EngineError;

/// Refuses a key of `doc` that is in none of the `known` lists (a reader's own options and
/// the ones every reader shares); `path` prefixes the name in the message (`"backoff."` for
/// a nested option, `""` at the top).
pub(crate) fn reject_unknown(
    doc: &Document,
    known: &[&[&str]],
    path: &str,
) -> Result<(), EngineError> {
    let is_known = |k: &str| known.iter().any(|list| list.contains(&k));
    match doc.keys().find(|k| !is_known(k)) {
        Some(unknown) => Err(EngineError::new(
            super::errors::ErrorCode::InvalidOption,
            format!("unknown option \"{path}{unknown}\""),
        )),
        None => Ok(()),
    }
}

pub(crate) fn prefix(mut e: EngineError, p: &str) -> EngineError {
    e.message = e.message.replacen("option \"", &format!("option \"{p}"), 1);
    e
}

pub(crate) fn optional_string(doc: &Document, name: &str) -> Result<Option<String>, EngineError> {
    match doc.get(name) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(EngineError::invalid_option(
            name,
            "a non-empty string",
            &describe(other),
        )),
    }
}

pub(crate) fn optional_bool(doc: &Document, name: &str) -> Result<Option<bool>, EngineError> {
    match doc.get(name) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Boolean(b)) => Ok(Some(*b)),
        Some(other) => Err(EngineError::invalid_option(
            name,
            "a boolean",
            type_name(other),
        )),
    }
}

pub(crate) fn optional_document(
    doc: &Document,
    name: &str,
) -> Result<Option<Document>, EngineError> {
    match doc.get(name) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d.clone())),
        Some(other) => Err(EngineError::invalid_option(
            name,
            "an object",
            type_name(other),
        )),
    }
}

/// JS numbers arrive as int32, int64 or double; accept any that holds a whole number.
pub(crate) fn optional_whole(
    doc: &Document,
    name: &str,
    max: u64,
) -> Result<Option<u64>, EngineError> {
    let value = match doc.get(name) {
        None | Some(Bson::Null) => return Ok(None),
        Some(v) => v,
    };
    let expected = "a non-negative integer";
    match as_f64(value) {
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= max as f64 => Ok(Some(n as u64)),
        _ => Err(EngineError::invalid_option(
            name,
            expected,
            &describe(value),
        )),
    }
}

pub(crate) fn as_f64(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(n) => Some(*n as f64),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(n) => Some(*n),
        _ => None,
    }
}

/// The type name, plus the value for numbers (so "got -1" says what was wrong).
pub(crate) fn describe(v: &Bson) -> String {
    match as_f64(v) {
        Some(n) => format!("{n}"),
        None => type_name(v).to_string(),
    }
}

/// Type names as a JS user would say them.
pub(crate) fn type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Decimal128(_) => "number",
        Bson::String(_) | Bson::Symbol(_) => "string",
        Bson::Array(_) => "array",
        Bson::Document(_) => "object",
        Bson::Boolean(_) => "boolean",
        Bson::Null | Bson::Undefined => "null",
        Bson::Timestamp(_) => "Timestamp",
        Bson::DateTime(_) => "Date",
        Bson::ObjectId(_) => "ObjectId",
        Bson::Binary(_) => "Binary",
        Bson::RegularExpression(_) => "RegExp",
        _ => "an unsupported BSON value",
    }
}

pub(crate) fn required_string(doc: &Document, name: &str) -> Result<String, EngineError> {
    optional_string(doc, name)?
        .ok_or_else(|| EngineError::invalid_option(name, "a non-empty string", "nothing"))
}
