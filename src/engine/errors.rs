//! One error type for the engine, with stable codes mirrored by the JS error classes
//! (`lib/errors.js`). Classification decides what the stream survives.

use std::fmt;

use mongodb::error::{Error as DriverError, ErrorKind};

use super::redact::redact;

/// Stable error codes. The strings are public API: JS maps them to error classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A user option has the wrong type or value.
    InvalidOption,
    /// 286: the position fell off the oplog.
    ChangeStreamHistoryLost,
    /// 260: the token cannot be resumed from (e.g. `resumeAfter` an invalidate token).
    InvalidResumeToken,
    /// 280: the server cannot continue this stream (token not found, `_id` modified).
    ChangeStreamFatal,
    /// Authentication or authorization failure.
    Unauthorized,
    /// The pipeline or watch options were rejected by the server.
    InvalidPipeline,
    /// The user's `backoff.maxRetries` ran out during an outage.
    RetriesExhausted,
    /// A network error or server selection failure (resumable). Server replies, even
    /// resumable ones, are `ServerError`.
    Network,
    /// No reply, or no progress, for `stallTimeoutMS` (resumable: the stream re-opens).
    Stalled,
    /// Any other server error.
    ServerError,
    /// The client library itself failed (bad reply, internal error).
    ClientError,
    /// A token store failed, or holds an unreadable record.
    TokenStore,
    /// A stored position belongs to another name, namespace or pipeline.
    PositionMismatch,
    /// A consumer group's lease collection could not be read or written.
    LeaseStore,
}

impl ErrorCode {
    /// Every code, in one list: the native layer exports it (`errorCodes()`) and the JS
    /// error classes are checked against it.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidOption,
        ErrorCode::ChangeStreamHistoryLost,
        ErrorCode::InvalidResumeToken,
        ErrorCode::ChangeStreamFatal,
        ErrorCode::Unauthorized,
        ErrorCode::InvalidPipeline,
        ErrorCode::RetriesExhausted,
        ErrorCode::Network,
        ErrorCode::Stalled,
        ErrorCode::ServerError,
        ErrorCode::ClientError,
        ErrorCode::TokenStore,
        ErrorCode::PositionMismatch,
        ErrorCode::LeaseStore,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidOption => "InvalidOption",
            ErrorCode::ChangeStreamHistoryLost => "ChangeStreamHistoryLost",
            ErrorCode::InvalidResumeToken => "InvalidResumeToken",
            ErrorCode::ChangeStreamFatal => "ChangeStreamFatal",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::InvalidPipeline => "InvalidPipeline",
            ErrorCode::RetriesExhausted => "RetriesExhausted",
            ErrorCode::Network => "NetworkError",
            ErrorCode::Stalled => "Stalled",
            ErrorCode::ServerError => "ServerError",
            ErrorCode::ClientError => "ClientError",
            ErrorCode::TokenStore => "TokenStoreError",
            ErrorCode::PositionMismatch => "PositionMismatch",
            ErrorCode::LeaseStore => "LeaseStoreError",
        }
    }
}

/// An engine error: what JS receives as `NativeErrorInfo`. Messages are redacted at
/// construction, so no credential can leak through any later path.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineError {
    pub code: ErrorCode,
    pub message: String,
    pub server_code: Option<i32>,
    pub code_name: Option<String>,
    pub labels: Vec<String>,
    /// Whether the stream may re-open after this error.
    pub resumable: bool,
}

impl EngineError {
    pub fn new(code: ErrorCode, message: impl AsRef<str>) -> Self {
        EngineError {
            code,
            message: redact(message.as_ref()),
            server_code: None,
            code_name: None,
            labels: Vec::new(),
            resumable: false,
        }
    }

    /// An engine-made error the stream survives (re-opens after).
    pub fn resumable(code: ErrorCode, message: impl AsRef<str>) -> Self {
        EngineError {
            resumable: true,
            ..Self::new(code, message)
        }
    }

    pub fn invalid_option(name: &str, expected: &str, got: &str) -> Self {
        Self::new(
            ErrorCode::InvalidOption,
            format!("option \"{name}\" must be {expected}, got {got}"),
        )
    }

    /// Classifies a driver error outside a reader's read (client construction, token
    /// stores, the oplog window): the generic rule ([`Rules::Generic`]).
    pub fn from_driver(err: &DriverError) -> Self {
        Self::classify(err, Rules::Generic)
    }

    /// THE classification of a driver error: its stable code, the server's code, name and
    /// labels, and whether the reader may re-open after it under `rules` (see
    /// [`is_resumable_server_error`]). Some servers send 286 without the
    /// `NonResumableChangeStreamError` label, so the stable code comes from the server code.
    pub fn classify(err: &DriverError, rules: Rules) -> Self {
        let mut labels: Vec<String> = err.labels().iter().cloned().collect();
        labels.sort();
        let message = match err.kind.as_ref() {
            // The driver's Display appends the raw server reply; the code, name and
            // message say it all.
            ErrorKind::Command(cmd) => format!("{} ({}): {}", cmd.code_name, cmd.code, cmd.message),
            kind => kind.to_string(),
        };
        let (code, server_code, code_name, resumable) = match err.kind.as_ref() {
            ErrorKind::Command(cmd) => {
                let resumable = is_resumable_server_error(cmd.code, &labels, rules);
                (
                    code_for_server_error(cmd.code),
                    Some(cmd.code),
                    Some(cmd.code_name.clone()),
                    resumable,
                )
            }
            // Network errors and server selection failures: resumable under every rule
            // (the spec's "any network error"; the Node driver counts selection too).
            ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. } => (ErrorCode::Network, None, None, true),
            ErrorKind::Authentication { .. } => (ErrorCode::Unauthorized, None, None, false),
            ErrorKind::InvalidArgument { .. } => (ErrorCode::InvalidOption, None, None, false),
            _ => (ErrorCode::ClientError, None, None, false),
        };
        EngineError {
            code,
            message: redact(&message),
            server_code,
            code_name,
            labels,
            resumable,
        }
    }
}

/// Which resumability rule applies to a server error (network errors are resumable under
/// all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// A change stream's read, per the change-streams spec, by the wire version of the
    /// server that answered (`None`: not known yet, taken as a current server). Wire
    /// version 9 (4.4) and later: the `ResumableChangeStreamError` label decides; older:
    /// the code list, unless labelled `NonResumableChangeStreamError`. CursorNotFound (43)
    /// always resumes.
    ChangeStream { wire_version: Option<i32> },
    /// Not a change stream (the restartable cursor, token stores, the oplog window): the
    /// code list or the `ResumableChangeStreamError` label; the server labels only change
    /// stream commands, so the list is what identifies transient server states here.
    Generic,
}

/// The wire version of MongoDB 4.4, from which servers label resumable change stream errors.
pub const LABELS_DECIDE_FROM_WIRE_VERSION: i32 = 9;

/// The label 4.4+ servers attach to errors a change stream may resume after.
pub const RESUMABLE_LABEL: &str = "ResumableChangeStreamError";
/// The label real servers attach to 280 and 286.
pub const NON_RESUMABLE_LABEL: &str = "NonResumableChangeStreamError";

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for EngineError {}

/// The change-streams spec's resumable codes for servers older than 4.4 (wire version < 9).
pub const RESUMABLE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 13388, 234, 133,
];

/// CursorNotFound: resumable on every server version.
pub const CURSOR_NOT_FOUND: i32 = 43;

/// Codes that are never resumable, whatever labels a server attaches: the product handles
/// them itself (286 is a lost position, reported as such; 260/280 cannot be retried).
const FATAL_CODES: &[i32] = &[260, 280, 286];

/// Whether a reader may re-open after the server error `code` with `labels` under `rules`.
pub fn is_resumable_server_error(code: i32, labels: &[String], rules: Rules) -> bool {
    let has = |label: &str| labels.iter().any(|l| l == label);
    if FATAL_CODES.contains(&code) || has(NON_RESUMABLE_LABEL) {
        return false;
    }
    if code == CURSOR_NOT_FOUND || has(RESUMABLE_LABEL) {
        return true;
    }
    match rules {
        Rules::ChangeStream {
            wire_version: Some(w),
        } if w < LABELS_DECIDE_FROM_WIRE_VERSION => RESUMABLE_CODES.contains(&code),
        Rules::ChangeStream { .. } => false,
        Rules::Generic => RESUMABLE_CODES.contains(&code),
    }
}

/// The server's BSONObjectTooLarge: on a change stream, an event (with its images and
/// update description) exceeded 16 MB. Every resume hits the same event again unless the
/// stream re-opens with `$changeStreamSplitLargeEvent` (MongoDB 7.0+, 6.0.9+).
pub const EVENT_TOO_LARGE: i32 = 10334;

/// "Unrecognized pipeline stage name": on a re-open with `$changeStreamSplitLargeEvent`,
/// the server does not have that stage.
pub const UNKNOWN_STAGE: i32 = 40324;

impl EngineError {
    /// The server failed a change stream on an event larger than 16 MB.
    pub fn is_event_too_large(&self) -> bool {
        self.server_code == Some(EVENT_TOO_LARGE)
    }

    /// The server rejected a pipeline stage it does not know.
    pub fn is_unknown_stage(&self) -> bool {
        self.server_code == Some(UNKNOWN_STAGE)
    }
}

/// A write refused because a document with its `_id` exists (11000): how conditional
/// upserts (fenced writes, lease creation) learn that another writer got there first.
pub fn is_duplicate_key(err: &DriverError) -> bool {
    use mongodb::error::WriteFailure;
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(cmd) => cmd.code == 11000,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|w| w.code == 11000)),
        _ => false,
    }
}

fn code_for_server_error(code: i32) -> ErrorCode {
    match code {
        286 => ErrorCode::ChangeStreamHistoryLost,
        260 => ErrorCode::InvalidResumeToken,
        280 => ErrorCode::ChangeStreamFatal,
        // Unauthorized, AuthenticationFailed.
        13 | 18 => ErrorCode::Unauthorized,
        // Unknown stage, both resume options, token plus time, bad $changeStream option,
        // FailedToParse, InvalidOptions, TypeMismatch, Location40573 (not a replica set).
        40324 | 50865 | 40674 | 40415 | 9 | 72 | 14 | 40573 => ErrorCode::InvalidPipeline,
        // Resumable or not, a server's answer is a server error; `resumable` says which.
        _ => ErrorCode::ServerError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    const MODERN: Rules = Rules::ChangeStream {
        wire_version: Some(27),
    };
    const WIRE_4_2: Rules = Rules::ChangeStream {
        wire_version: Some(8),
    };

    /// The spec's allowlist table (change-streams-resume-allowlist, servers before 4.4):
    /// each code resumes without any label; so does CursorNotFound.
    #[test]
    fn allowlist_table_old_servers_resume_by_code() {
        let table: &[(i32, &str)] = &[
            (6, "HostUnreachable"),
            (7, "HostNotFound"),
            (89, "NetworkTimeout"),
            (91, "ShutdownInProgress"),
            (189, "PrimarySteppedDown"),
            (262, "ExceededTimeLimit"),
            (9001, "SocketException"),
            (10107, "NotWritablePrimary"),
            (11600, "InterruptedAtShutdown"),
            (11602, "InterruptedDueToReplStateChange"),
            (13435, "NotPrimaryNoSecondaryOk"),
            (13436, "NotPrimaryOrSecondary"),
            (63, "StaleShardVersion"),
            (150, "StaleEpoch"),
            (234, "RetryChangeStream"),
            (133, "FailedToSatisfyReadPreference"),
            (43, "CursorNotFound"),
        ];
        for (code, name) in table {
            assert!(
                is_resumable_server_error(*code, &[], WIRE_4_2),
                "{name} ({code})"
            );
        }
        // Not on the list: surfaced.
        assert!(!is_resumable_server_error(50, &[], WIRE_4_2));
        assert!(!is_resumable_server_error(2, &[], WIRE_4_2));
        // The non-resumable label wins over the list.
        assert!(!is_resumable_server_error(
            6,
            &labels(&["NonResumableChangeStreamError"]),
            WIRE_4_2
        ));
    }

    /// The spec's error-label table (change-streams-resume-errorLabels, 4.4+): the label
    /// decides, whatever the code; an unlabelled listed code is surfaced; 43 still resumes.
    #[test]
    fn error_label_table_4_4_and_later() {
        let label = labels(&["ResumableChangeStreamError"]);
        for code in RESUMABLE_CODES.iter().chain([&50, &12345]) {
            assert!(
                is_resumable_server_error(*code, &label, MODERN),
                "labelled {code}"
            );
        }
        // "change stream does not resume if error does not contain ResumableChangeStreamError"
        assert!(!is_resumable_server_error(6, &[], MODERN));
        for code in RESUMABLE_CODES {
            assert!(
                !is_resumable_server_error(*code, &[], MODERN),
                "unlabelled {code}"
            );
        }
        assert!(is_resumable_server_error(43, &[], MODERN));
        // Wire version 9 is the boundary; unknown counts as current.
        let wire9 = Rules::ChangeStream {
            wire_version: Some(9),
        };
        assert!(!is_resumable_server_error(6, &[], wire9));
        let unknown = Rules::ChangeStream { wire_version: None };
        assert!(!is_resumable_server_error(6, &[], unknown));
    }

    #[test]
    fn generic_rule_keeps_the_code_list() {
        for code in RESUMABLE_CODES.iter().chain([&43]) {
            assert!(
                is_resumable_server_error(*code, &[], Rules::Generic),
                "code {code}"
            );
        }
        assert!(!is_resumable_server_error(12345, &[], Rules::Generic));
        assert!(is_resumable_server_error(
            12345,
            &labels(&["ResumableChangeStreamError"]),
            Rules::Generic
        ));
    }

    #[test]
    fn history_lost_is_fatal_even_with_a_resumable_label() {
        for rules in [MODERN, WIRE_4_2, Rules::Generic] {
            assert!(!is_resumable_server_error(
                286,
                &labels(&["ResumableChangeStreamError"]),
                rules
            ));
            assert!(!is_resumable_server_error(
                6,
                &labels(&["NonResumableChangeStreamError"]),
                rules
            ));
        }
        assert_eq!(
            code_for_server_error(286),
            ErrorCode::ChangeStreamHistoryLost
        );
        assert_eq!(code_for_server_error(260), ErrorCode::InvalidResumeToken);
        assert_eq!(code_for_server_error(280), ErrorCode::ChangeStreamFatal);
    }

    #[test]
    fn event_too_large_and_unknown_stage_are_told_by_server_code() {
        let mut e = EngineError::new(ErrorCode::ServerError, "BSONObjectTooLarge");
        assert!(!e.is_event_too_large());
        e.server_code = Some(10334);
        assert!(e.is_event_too_large());
        for rules in [
            Rules::ChangeStream {
                wire_version: Some(27),
            },
            Rules::Generic,
        ] {
            assert!(
                !is_resumable_server_error(10334, &[], rules),
                "a plain resume hits it again"
            );
        }
        e.server_code = Some(40324);
        assert!(e.is_unknown_stage());
        assert_eq!(code_for_server_error(40324), ErrorCode::InvalidPipeline);
    }

    #[test]
    fn invalid_option_names_the_option() {
        let e = EngineError::invalid_option("batchSize", "a non-negative integer", "string");
        assert_eq!(e.code, ErrorCode::InvalidOption);
        assert_eq!(
            e.message,
            "option \"batchSize\" must be a non-negative integer, got string"
        );
    }
}
