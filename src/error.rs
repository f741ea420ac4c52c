//! The spec's error codes (ERRORS.md), their HTTP statuses, and `RpcError`, the value every RPC
//! failure becomes before it is written as an error frame.
//!
//! Two vocabularies travel on the wire (the v1 registry and the legacy UPPER_SNAKE codes); both are
//! members of `ErrorCode` and are never normalised into each other.

use simd_json::OwnedValue as Value;

macro_rules! error_codes {
    ($($variant:ident => $wire:literal, $status:literal;)*) => {
        /// Every error code a client can see, spelled as on the wire by `as_str`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $($variant,)* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as written in `error.code`.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $wire,)* }
            }

            /// The HTTP status sent for this code (ERRORS.md §3; unlisted codes are 500).
            pub fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }
        }
    };
}

error_codes! {
    // Legacy codes (ERRORS.md §4).
    Unauthorized => "UNAUTHORIZED", 401;
    Forbidden => "FORBIDDEN", 403;
    InvalidRequestLegacy => "INVALID_REQUEST", 400;
    InvalidInputLegacy => "INVALID_INPUT", 400;
    InvalidFrame => "INVALID_FRAME", 400;
    InvalidJson => "INVALID_JSON", 400;
    ProtocolUnsupported => "PROTOCOL_UNSUPPORTED", 400;
    ConnectionLimit => "CONNECTION_LIMIT", 500;
    NotFound => "NOT_FOUND", 404;
    MethodNotFound => "METHOD_NOT_FOUND", 404;
    Conflict => "CONFLICT", 409;
    RunActive => "RUN_ACTIVE", 409;
    ServerError => "SERVER_ERROR", 500;
    PayloadTooLargeLegacy => "PAYLOAD_TOO_LARGE", 413;
    ConnectionClosed => "ConnectionClosed", 500;
    ExtensionMethodNotFound => "EXTENSION_METHOD_NOT_FOUND", 500;
    ExtensionHandlerError => "EXTENSION_HANDLER_ERROR", 500;
    MissingInputTable => "MISSING_INPUT_TABLE", 500;
    TxidNotCaptured => "TXID_NOT_CAPTURED", 500;
    // The v1 registry (ERRORS.md §2) and the protocol-package families.
    InvalidRequest => "InvalidRequest", 400;
    InvalidInput => "InvalidInput", 400;
    UnauthorizedV1 => "Unauthorized", 401;
    ForbiddenV1 => "Forbidden", 403;
    RunNotFound => "RunNotFound", 404;
    ScoreNotFound => "ScoreNotFound", 404;
    RunNotActive => "RUN_NOT_ACTIVE", 409;
    CronNotFound => "CronNotFound", 500;
    TicketNotFound => "TicketNotFound", 500;
    NodeNotFound => "NodeNotFound", 404;
    IterationNotFound => "IterationNotFound", 404;
    NodeHasNoOutput => "NodeHasNoOutput", 404;
    AttemptNotFound => "AttemptNotFound", 404;
    AttemptNotFinished => "AttemptNotFinished", 409;
    FrameOutOfRange => "FrameOutOfRange", 400;
    SeqOutOfRange => "SeqOutOfRange", 400;
    Busy => "Busy", 409;
    AlreadyDecided => "AlreadyDecided", 409;
    RateLimited => "RateLimited", 429;
    PayloadTooLarge => "PayloadTooLarge", 413;
    DiffTooLarge => "DiffTooLarge", 413;
    BackpressureDisconnect => "BackpressureDisconnect", 429;
    UnsupportedSandbox => "UnsupportedSandbox", 501;
    VcsError => "VcsError", 500;
    RewindFailed => "RewindFailed", 500;
    TimeTravelSideEffectBlocked => "TIME_TRAVEL_SIDE_EFFECT_BLOCKED", 500;
    Internal => "Internal", 500;
    RevisionConflict => "REVISION_CONFLICT", 409;
    SsrfBlocked => "SSRF_BLOCKED", 400;
    QuotaExceeded => "QUOTA_EXCEEDED", 429;
    InvalidRunId => "InvalidRunId", 400;
    InvalidNodeId => "InvalidNodeId", 400;
    InvalidIteration => "InvalidIteration", 400;
    InvalidDelta => "InvalidDelta", 400;
    InvalidFrameNo => "InvalidFrameNo", 400;
    ConfirmationRequired => "ConfirmationRequired", 400;
    SchemaConversionError => "SchemaConversionError", 500;
    MalformedOutputRow => "MalformedOutputRow", 500;
    WorkingTreeDirty => "WorkingTreeDirty", 500;
    RunOwnerAlive => "RunOwnerAlive", 500;
}

/// Who caused an error: decides the log level (peers' mistakes are `debug`, ours are `error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    Peer,
    Internal,
}

/// An RPC failure: the code, the message, and detail fields spread into `error` on the wire
/// (PROTOCOL.md §11), e.g. `requiredScope` or `refresh`.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Vec<(&'static str, Value)>,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// Adds a field spread directly into the wire `error` object.
    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.details.push((key, value.into()));
        self
    }

    pub fn source(&self) -> ErrorSource {
        if self.code.http_status() >= 500 {
            ErrorSource::Internal
        } else {
            ErrorSource::Peer
        }
    }

    /// The `error` object of a response frame: `version`, `code`, `message`, then the details.
    pub fn to_value(&self) -> Value {
        let mut object = simd_json::owned::Object::with_capacity(3 + self.details.len());
        object.insert("version".into(), Value::from("v1"));
        object.insert("code".into(), Value::from(self.code.as_str()));
        object.insert("message".into(), Value::from(self.message.as_str()));
        for (key, value) in &self.details {
            object.insert((*key).into(), value.clone());
        }
        Value::Object(Box::new(object))
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for RpcError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statuses of ERRORS.md §3, code by code.
    #[test]
    fn statuses_match_the_spec_table() {
        let expected: &[(&str, u16)] = &[
            ("INVALID_REQUEST", 400),
            ("InvalidRequest", 400),
            ("INVALID_FRAME", 400),
            ("INVALID_INPUT", 400),
            ("InvalidInput", 400),
            ("PROTOCOL_UNSUPPORTED", 400),
            ("InvalidRunId", 400),
            ("InvalidNodeId", 400),
            ("InvalidIteration", 400),
            ("InvalidDelta", 400),
            ("InvalidFrameNo", 400),
            ("ConfirmationRequired", 400),
            ("FrameOutOfRange", 400),
            ("SeqOutOfRange", 400),
            ("SSRF_BLOCKED", 400),
            ("INVALID_JSON", 400),
            ("UNAUTHORIZED", 401),
            ("Unauthorized", 401),
            ("FORBIDDEN", 403),
            ("Forbidden", 403),
            ("NOT_FOUND", 404),
            ("METHOD_NOT_FOUND", 404),
            ("RunNotFound", 404),
            ("ScoreNotFound", 404),
            ("NodeNotFound", 404),
            ("AttemptNotFound", 404),
            ("IterationNotFound", 404),
            ("NodeHasNoOutput", 404),
            ("AttemptNotFinished", 409),
            ("Busy", 409),
            ("AlreadyDecided", 409),
            ("RUN_NOT_ACTIVE", 409),
            ("RUN_ACTIVE", 409),
            ("CONFLICT", 409),
            ("REVISION_CONFLICT", 409),
            ("DiffTooLarge", 413),
            ("PayloadTooLarge", 413),
            ("PAYLOAD_TOO_LARGE", 413),
            ("RateLimited", 429),
            ("BackpressureDisconnect", 429),
            ("QUOTA_EXCEEDED", 429),
            ("UnsupportedSandbox", 501),
            ("VcsError", 500),
            ("RewindFailed", 500),
            ("SERVER_ERROR", 500),
            ("Internal", 500),
            ("TIME_TRAVEL_SIDE_EFFECT_BLOCKED", 500),
            ("RunOwnerAlive", 500),
            ("ConnectionClosed", 500),
            ("WorkingTreeDirty", 500),
            ("SchemaConversionError", 500),
            ("MalformedOutputRow", 500),
            ("MISSING_INPUT_TABLE", 500),
            ("EXTENSION_METHOD_NOT_FOUND", 500),
            ("EXTENSION_HANDLER_ERROR", 500),
            ("CronNotFound", 500),
            ("TicketNotFound", 500),
            ("TXID_NOT_CAPTURED", 500),
            ("CONNECTION_LIMIT", 500),
        ];
        assert_eq!(
            expected.len(),
            ErrorCode::ALL.len(),
            "every code is in the table once"
        );
        for (wire, status) in expected {
            let code = ErrorCode::ALL
                .iter()
                .find(|c| c.as_str() == *wire)
                .unwrap_or_else(|| panic!("code {wire} missing"));
            assert_eq!(code.http_status(), *status, "status of {wire}");
        }
    }

    #[test]
    fn error_value_spreads_details() {
        let error = RpcError::new(
            ErrorCode::Forbidden,
            "Missing required scope run:admin for rewindRun",
        )
        .with("requiredScope", "run:admin");
        let text = simd_json::to_string(&error.to_value()).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"version":"v1","code":"FORBIDDEN","message":"Missing required scope run:admin for rewindRun","requiredScope":"run:admin"}"#
        );
    }
}
