//! Authentication and authorization (AUTH.md): the request gates (Host, Origin, cookie-origin),
//! the modes (none, token, JWT HS256, trusted proxy) that turn a request into a `Principal`, and
//! the scope grammar (`scope`). Pure functions of their inputs and the clock value passed in; no IO.
//! Tokens and secrets are never logged or put in error messages.

pub mod gates;
pub mod jwt;
pub mod proxy;
pub mod scope;
pub mod token;

use crate::config::AuthConfig;

/// The identity of an authenticated request or socket (AUTH.md §1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub role: String,
    pub scopes: Vec<String>,
    pub user_id: Option<String>,
    pub token_id: Option<String>,
}

/// An authentication failure: always `UNAUTHORIZED` on the wire; `refresh` adds
/// `"refresh":"smithers token issue"` (expired or revoked credentials).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthError {
    pub message: &'static str,
    pub refresh: bool,
}

/// The value of `refresh` on expired or revoked credentials.
pub const REFRESH_HINT: &str = "smithers token issue";

/// Read access to request headers by lower-case name (first value). Implemented by the HTTP head
/// and by the headers a WebSocket kept from its upgrade request.
pub trait HeaderLookup {
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderLookup for [(String, String)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

impl HeaderLookup for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

/// Headers any auth mode or gate may read; a WebSocket keeps only these from its upgrade request.
pub const AUTH_HEADER_NAMES_FIXED: &[&str] = &["host", "origin", "x-smithers-key", "authorization", "cookie", "x-smithers-token-id", "x-forwarded-proto"];

/// The configured auth mode, ready to authenticate requests.
#[derive(Debug)]
pub struct Authenticator {
    config: AuthConfig,
    trust_any_host: bool,
}

impl Authenticator {
    /// `trust_any_host_env` is the value of SMITHERS_GATEWAY_TRUST_ANY_HOST (`1`/`true` enable it).
    pub fn new(config: AuthConfig, trust_any_host_env: Option<&str>) -> Authenticator {
        let _ = trust_any_host_env;
        Authenticator { config, trust_any_host: false }
    }

    /// True when no auth is configured (mode `none`).
    pub fn is_open(&self) -> bool {
        todo!("helper {:?} {}", self.config, self.trust_any_host)
    }

    /// Header names this mode reads, beyond `AUTH_HEADER_NAMES_FIXED` (trusted-proxy headers).
    pub fn extra_header_names(&self) -> Vec<String> {
        todo!()
    }

    /// The gates of AUTH.md §2 in order (Host, Origin, cookie-origin). `explicit_token` is a
    /// `connect.params.auth.token`; when present the request is not cookie-only.
    pub fn check_gates(&self, headers: &dyn HeaderLookup, explicit_token: Option<&str>) -> Result<(), AuthError> {
        todo!("helper {} {:?}", headers.header("host").is_some(), explicit_token.is_some())
    }

    /// Gates, then the mode's credential check (AUTH.md §3). `now_ms` is the wall clock in epoch ms.
    /// Credential lookup order: `explicit_token`, `x-smithers-key`, `Authorization` (`Bearer ` prefix
    /// case-insensitive, else the whole value), then cookie `smithers_session_<port>` (or
    /// `smithers_session` when Host has no numeric port), URL-decoded.
    pub fn authenticate(&self, headers: &dyn HeaderLookup, explicit_token: Option<&str>, now_ms: u64) -> Result<Principal, AuthError> {
        todo!("helper {} {:?} {now_ms}", headers.header("host").is_some(), explicit_token.is_some())
    }

    /// The credential the request presents, by the lookup order (headers and cookie only).
    pub fn presented_token(&self, headers: &dyn HeaderLookup) -> Option<String> {
        todo!("merge {}", headers.header("host").is_some())
    }

    /// True for the modes that authenticate a token (token, JWT): only they set a session cookie.
    pub fn uses_tokens(&self) -> bool {
        todo!()
    }
}
