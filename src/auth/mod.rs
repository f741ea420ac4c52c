//! Authentication and authorization (AUTH.md): the request gates (Host, Origin, cookie-origin),
//! the modes (none, token, JWT HS256, trusted proxy) that turn a request into a `Principal`, and
//! the scope grammar (`scope`). Pure functions of their inputs and the clock value passed in; no IO.
//! Tokens and secrets are never logged or put in error messages.
//!
//! This file owns the `Authenticator` (mode dispatch and gate order); each mode lives in its own
//! file (`token`, `jwt`, `proxy`), the gates and the credential lookup in `gates`.
//! Must never: skip a gate, let a gate or mode panic on any header bytes, or show a token or
//! secret in Debug output.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod gates;
pub mod jwt;
pub mod proxy;
pub mod scope;
pub mod token;

use crate::config::AuthConfig;

use gates::CredentialSource;
use jwt::{JwtAuth, JwtSettings};
use proxy::ProxyAuth;
use token::{TokenStore, TOKEN_REQUIRED};

pub use gates::session_cookie_name;

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
        self.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A parsed HTTP head, for the gates and credential lookup of HTTP requests and upgrades.
impl HeaderLookup for crate::http::request::RequestHead {
    fn header(&self, name: &str) -> Option<&str> {
        self.header_str(name)
    }
}

impl HeaderLookup for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

/// Headers any auth mode or gate may read; a WebSocket keeps only these from its upgrade request.
pub const AUTH_HEADER_NAMES_FIXED: &[&str] = &[
    "host",
    "origin",
    "x-smithers-key",
    "authorization",
    "cookie",
    "x-smithers-token-id",
    "x-forwarded-proto",
];

/// The mode-specific state, built once from the configuration.
#[derive(Debug)]
enum Mode {
    /// No auth configured (AUTH.md §3.0).
    Open,
    Token(TokenStore),
    Jwt(Box<JwtAuth>),
    Proxy(ProxyAuth),
}

/// The configured auth mode, ready to authenticate requests. Its Debug output names the mode and
/// the non-secret settings only (tokens and the JWT secret are redacted by the mode types).
#[derive(Debug)]
pub struct Authenticator {
    mode: Mode,
    trust_any_host: bool,
    allowed_origins: Vec<String>,
}

impl Authenticator {
    /// `trust_any_host_env` is the value of SMITHERS_GATEWAY_TRUST_ANY_HOST (`1`/`true` enable it).
    pub fn new(config: AuthConfig, trust_any_host_env: Option<&str>) -> Authenticator {
        // "(an explicit "insecure" option, or environment variable `SMITHERS_GATEWAY_TRUST_ANY_HOST`
        // = `1` or `true`)": exactly those two spellings.
        let env_trust = matches!(trust_any_host_env, Some("1") | Some("true"));
        let (mode, trust_any_host, allowed_origins) = match config {
            AuthConfig::None { trust_any_host } => {
                (Mode::Open, trust_any_host || env_trust, Vec::new())
            }
            AuthConfig::Token {
                tokens,
                allowed_origins,
            } => (
                Mode::Token(TokenStore::new(&tokens)),
                env_trust,
                allowed_origins,
            ),
            AuthConfig::Jwt {
                issuer,
                audience,
                secret,
                scopes_claim,
                role_claim,
                user_claim,
                default_role,
                default_scopes,
                clock_skew_seconds,
                allow_missing_exp,
                allowed_origins,
            } => {
                let jwt = JwtAuth::new(JwtSettings {
                    issuer: &issuer,
                    audience: &audience,
                    secret: &secret,
                    scopes_claim: scopes_claim.as_deref(),
                    role_claim: role_claim.as_deref(),
                    user_claim: user_claim.as_deref(),
                    default_role: default_role.as_deref(),
                    default_scopes: default_scopes.as_deref(),
                    clock_skew_seconds,
                    allow_missing_exp,
                });
                (Mode::Jwt(Box::new(jwt)), env_trust, allowed_origins)
            }
            AuthConfig::TrustedProxy {
                trusted_headers,
                default_role,
                default_scopes,
                allowed_origins,
            } => (
                Mode::Proxy(ProxyAuth::new(
                    trusted_headers.as_deref(),
                    default_role,
                    default_scopes,
                )),
                env_trust,
                allowed_origins,
            ),
        };
        Authenticator {
            mode,
            trust_any_host,
            allowed_origins,
        }
    }

    /// True when no auth is configured (mode `none`).
    pub fn is_open(&self) -> bool {
        matches!(self.mode, Mode::Open)
    }

    /// True when the Host gate is off because of trust-any-host (config option or environment).
    pub fn trusts_any_host(&self) -> bool {
        self.trust_any_host
    }

    /// The credential the request presents, by the lookup order (headers and cookie only).
    pub fn presented_token(&self, headers: &dyn HeaderLookup) -> Option<String> {
        gates::find_credential(headers, None).map(|credential| credential.token)
    }

    /// True for the modes that authenticate a token (token, JWT): only they set a session cookie.
    pub fn uses_tokens(&self) -> bool {
        matches!(self.mode, Mode::Token(_) | Mode::Jwt(_))
    }

    /// Header names this mode reads, beyond `AUTH_HEADER_NAMES_FIXED` (trusted-proxy headers).
    pub fn extra_header_names(&self) -> Vec<String> {
        match &self.mode {
            Mode::Proxy(proxy) => proxy.header_names(),
            _ => Vec::new(),
        }
    }

    /// The gates of AUTH.md §2 in order (Host, Origin, cookie-origin). `explicit_token` is a
    /// `connect.params.auth.token`; when present the request is not cookie-only.
    pub fn check_gates(
        &self,
        headers: &dyn HeaderLookup,
        explicit_token: Option<&str>,
    ) -> Result<(), AuthError> {
        let source =
            gates::find_credential(headers, explicit_token).map(|credential| credential.source);
        self.gates(headers, source)
    }

    fn gates(
        &self,
        headers: &dyn HeaderLookup,
        source: Option<CredentialSource>,
    ) -> Result<(), AuthError> {
        if self.is_open() {
            // 1. Host gate: "only when *no auth is configured* and the gateway is not in
            // trust-any-host mode".
            if self.trust_any_host {
                // 2. "no auth, trust-any-host mode: always passes".
                return Ok(());
            }
            gates::host_gate(headers)?;
            return gates::open_origin_gate(headers);
        }
        // 2. Origin gate, auth configured.
        gates::configured_origin_gate(headers, &self.allowed_origins)?;
        // 3. Cookie-origin gate: "only when auth is configured and the request's *only*
        // credential is the session cookie". Applied in every configured mode, trusted-proxy
        // included (the cookie is ambient browser authority there too).
        if source == Some(CredentialSource::Cookie) {
            gates::cookie_origin_gate(headers, &self.allowed_origins)?;
        }
        Ok(())
    }

    /// Gates, then the mode's credential check (AUTH.md §3). `now_ms` is the wall clock in epoch ms.
    /// Credential lookup order: `explicit_token`, `x-smithers-key`, `Authorization` (`Bearer ` prefix
    /// case-insensitive, else the whole value), then cookie `smithers_session_<port>` (or
    /// `smithers_session` when Host has no numeric port), URL-decoded.
    pub fn authenticate(
        &self,
        headers: &dyn HeaderLookup,
        explicit_token: Option<&str>,
        now_ms: u64,
    ) -> Result<Principal, AuthError> {
        let credential = gates::find_credential(headers, explicit_token);
        self.gates(
            headers,
            credential.as_ref().map(|credential| credential.source),
        )?;
        let token = credential
            .as_ref()
            .map(|credential| credential.token.as_str());
        match &self.mode {
            // "After the gates, every request is `{role:"operator", scopes:["*"], userId:null,
            // tokenId:null}`."
            Mode::Open => Ok(Principal {
                role: "operator".to_string(),
                scopes: vec!["*".to_string()],
                user_id: None,
                token_id: None,
            }),
            Mode::Token(store) => store.authenticate(token.ok_or(TOKEN_REQUIRED)?, now_ms),
            Mode::Jwt(jwt) => jwt.authenticate(token.ok_or(TOKEN_REQUIRED)?, now_ms),
            // "No token is read."
            Mode::Proxy(proxy) => proxy.authenticate(headers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OneOrMany, TokenGrant};
    use std::collections::BTreeMap;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn token_auth(allowed_origins: &[&str]) -> Authenticator {
        let mut tokens = BTreeMap::new();
        let grant = TokenGrant {
            role: "admin".into(),
            scopes: vec!["*".into()],
            user_id: Some("alice".into()),
            token_id: None,
            issued_at_ms: None,
            expires_at_ms: None,
            revoked_at_ms: None,
        };
        tokens.insert("good-token".to_string(), grant.clone());
        tokens.insert("a/b=c d".to_string(), grant);
        Authenticator::new(
            AuthConfig::Token {
                tokens,
                allowed_origins: allowed_origins.iter().map(|s| s.to_string()).collect(),
            },
            None,
        )
    }

    fn open(trust: bool, env: Option<&str>) -> Authenticator {
        Authenticator::new(
            AuthConfig::None {
                trust_any_host: trust,
            },
            env,
        )
    }

    const OPERATOR: fn() -> Principal = || Principal {
        role: "operator".into(),
        scopes: vec!["*".into()],
        user_id: None,
        token_id: None,
    };

    #[test]
    fn open_mode_gates_and_identity() {
        let auth = open(false, None);
        assert!(auth.is_open());
        assert!(!auth.trusts_any_host());
        assert_eq!(
            auth.authenticate(&headers(&[("host", "localhost:7331")]), None, 0),
            Ok(OPERATOR())
        );
        assert_eq!(auth.authenticate(&headers(&[]), None, 0), Ok(OPERATOR()));
        assert_eq!(
            auth.authenticate(&headers(&[("host", "evil.com")]), None, 0),
            Err(gates::HOST_NOT_ALLOWED)
        );
        assert_eq!(
            auth.authenticate(
                &headers(&[("host", "localhost"), ("origin", "http://evil.com")]),
                None,
                0
            ),
            Err(gates::ORIGIN_NOT_ALLOWED)
        );
        // Host is checked before Origin.
        assert_eq!(
            auth.check_gates(
                &headers(&[("host", "evil.com"), ("origin", "http://evil.com")]),
                None
            ),
            Err(gates::HOST_NOT_ALLOWED)
        );
        assert_eq!(
            auth.check_gates(
                &headers(&[("host", "127.0.0.1:1"), ("origin", "null")]),
                None
            ),
            Ok(())
        );
        // Credentials are irrelevant and never checked in open mode.
        assert_eq!(
            auth.authenticate(
                &headers(&[("authorization", "Bearer whatever")]),
                Some("x"),
                0
            ),
            Ok(OPERATOR())
        );
        assert!(auth.extra_header_names().is_empty());
    }

    #[test]
    fn trust_any_host_from_config_or_env() {
        let evil = headers(&[("host", "evil.com"), ("origin", "http://evil.com")]);
        for auth in [
            open(true, None),
            open(false, Some("1")),
            open(false, Some("true")),
        ] {
            assert!(auth.trusts_any_host());
            assert_eq!(auth.authenticate(&evil, None, 0), Ok(OPERATOR()));
        }
        for env in ["TRUE", "yes", "0", "false", "", " 1"] {
            let auth = open(false, Some(env));
            assert!(!auth.trusts_any_host(), "{env}");
            assert_eq!(
                auth.authenticate(&evil, None, 0),
                Err(gates::HOST_NOT_ALLOWED)
            );
        }
    }

    #[test]
    fn configured_mode_has_no_host_gate() {
        let auth = token_auth(&[]);
        assert!(!auth.is_open());
        let principal = auth.authenticate(
            &headers(&[("host", "evil.com"), ("x-smithers-key", "good-token")]),
            None,
            0,
        );
        assert_eq!(principal.map(|p| p.user_id), Ok(Some("alice".into())));
        // Empty allowedOrigins allows every Origin (with a header credential).
        let any_origin = headers(&[
            ("origin", "http://evil.com"),
            ("authorization", "Bearer good-token"),
        ]);
        assert!(auth.authenticate(&any_origin, None, 0).is_ok());
    }

    #[test]
    fn token_mode_credential_sources() {
        let auth = token_auth(&[]);
        let ok = |h: &[(&str, &str)], explicit: Option<&str>| {
            auth.authenticate(&headers(h), explicit, 0).map(|p| p.role)
        };
        assert_eq!(ok(&[], None), Err(TOKEN_REQUIRED));
        assert_eq!(ok(&[], Some("")), Err(TOKEN_REQUIRED));
        assert_eq!(ok(&[], Some("good-token")), Ok("admin".into()));
        assert_eq!(
            ok(&[("x-smithers-key", "good-token")], None),
            Ok("admin".into())
        );
        assert_eq!(
            ok(&[("authorization", "bearer good-token")], None),
            Ok("admin".into())
        );
        assert_eq!(
            ok(&[("authorization", "good-token")], None),
            Ok("admin".into())
        );
        assert_eq!(
            ok(&[("authorization", "Token good-token")], None),
            Err(token::INVALID_TOKEN)
        );
        // The explicit token wins even when a header holds a valid one.
        assert_eq!(
            ok(&[("x-smithers-key", "good-token")], Some("bad")),
            Err(token::INVALID_TOKEN)
        );
        // x-smithers-key wins over Authorization.
        assert_eq!(
            ok(
                &[
                    ("x-smithers-key", "bad"),
                    ("authorization", "Bearer good-token")
                ],
                None
            ),
            Err(token::INVALID_TOKEN)
        );
        // Cookie: port-specific name, percent-decoded.
        assert_eq!(
            ok(
                &[
                    ("host", "localhost:7331"),
                    ("cookie", "smithers_session_7331=a%2Fb%3Dc%20d")
                ],
                None
            ),
            Ok("admin".into())
        );
        assert_eq!(
            ok(
                &[
                    ("host", "gw.example.com"),
                    ("cookie", "smithers_session=good-token")
                ],
                None
            ),
            Ok("admin".into())
        );
        assert_eq!(
            ok(
                &[
                    ("host", "localhost:7331"),
                    ("cookie", "smithers_session=good-token")
                ],
                None
            ),
            Err(TOKEN_REQUIRED)
        );
    }

    #[test]
    fn configured_origin_and_cookie_gates() {
        let auth = token_auth(&["https://console.example.com"]);
        let run = |h: &[(&str, &str)], explicit: Option<&str>| {
            auth.authenticate(&headers(h), explicit, 0).map(|p| p.role)
        };
        let cookie = ("cookie", "smithers_session_7331=good-token");
        let host = ("host", "gw.example.com:7331");
        // Listed origin, absent origin: pass.
        assert!(run(
            &[
                ("origin", "https://console.example.com"),
                ("x-smithers-key", "good-token")
            ],
            None
        )
        .is_ok());
        assert!(run(&[("x-smithers-key", "good-token")], None).is_ok());
        // Unlisted origin: refused before the credential is looked at.
        assert_eq!(
            run(
                &[
                    ("origin", "http://evil.com"),
                    ("x-smithers-key", "good-token")
                ],
                None
            ),
            Err(gates::ORIGIN_NOT_ALLOWED)
        );
        assert_eq!(
            run(&[("origin", "http://evil.com")], None),
            Err(gates::ORIGIN_NOT_ALLOWED)
        );
        // Cookie-only: same host:port or listed origin passes; null origin passes.
        assert!(run(&[host, cookie], None).is_ok());
        assert!(run(&[host, cookie, ("origin", "null")], Some("good-token")).is_err()); // "null" is not listed
        assert!(run(
            &[host, cookie, ("origin", "https://console.example.com")],
            None
        )
        .is_ok());

        let open_list = token_auth(&[]);
        let run = |h: &[(&str, &str)], explicit: Option<&str>| {
            open_list
                .authenticate(&headers(h), explicit, 0)
                .map(|p| p.role)
        };
        assert!(run(
            &[host, cookie, ("origin", "http://gw.example.com:7331")],
            None
        )
        .is_ok());
        assert!(run(&[host, cookie, ("origin", "null")], None).is_ok());
        assert_eq!(
            run(&[host, cookie, ("origin", "http://evil.com")], None),
            Err(gates::COOKIE_ORIGIN_NOT_ALLOWED)
        );
        assert_eq!(
            run(
                &[host, cookie, ("origin", "http://gw.example.com:7332")],
                None
            ),
            Err(gates::COOKIE_ORIGIN_NOT_ALLOWED)
        );
        // Not cookie-only: an explicit token, x-smithers-key or Authorization lifts the gate.
        assert!(run(
            &[host, cookie, ("origin", "http://evil.com")],
            Some("good-token")
        )
        .is_ok());
        assert!(run(
            &[
                host,
                cookie,
                ("origin", "http://evil.com"),
                ("x-smithers-key", "good-token")
            ],
            None
        )
        .is_ok());
        assert!(run(
            &[
                host,
                cookie,
                ("origin", "http://evil.com"),
                ("authorization", "Bearer good-token")
            ],
            None
        )
        .is_ok());
        // The gate applies before the token check: a bad cookie from a foreign origin gets the gate error.
        assert_eq!(
            run(
                &[
                    host,
                    ("cookie", "smithers_session_7331=nope"),
                    ("origin", "http://evil.com")
                ],
                None
            ),
            Err(gates::COOKIE_ORIGIN_NOT_ALLOWED)
        );
        assert_eq!(
            open_list.check_gates(
                &headers(&[host, cookie, ("origin", "http://evil.com")]),
                None
            ),
            Err(gates::COOKIE_ORIGIN_NOT_ALLOWED)
        );
        assert_eq!(
            open_list.check_gates(
                &headers(&[host, cookie, ("origin", "http://evil.com")]),
                Some("t")
            ),
            Ok(())
        );
    }

    #[test]
    fn jwt_mode_through_the_authenticator() {
        let auth = Authenticator::new(
            AuthConfig::Jwt {
                issuer: "smithers".into(),
                audience: OneOrMany::One("gateway".into()),
                secret: "0123456789abcdef0123".into(),
                scopes_claim: None,
                role_claim: None,
                user_claim: None,
                default_role: None,
                default_scopes: None,
                clock_skew_seconds: None,
                allow_missing_exp: false,
                allowed_origins: vec![],
            },
            Some("1"),
        );
        assert!(!auth.is_open());
        assert_eq!(
            auth.authenticate(&headers(&[]), None, 0),
            Err(TOKEN_REQUIRED)
        );
        assert_eq!(
            auth.authenticate(&headers(&[("authorization", "Bearer a.b")]), None, 0),
            Err(jwt::SEGMENTS)
        );
        let text = format!("{auth:?}");
        assert!(!text.contains("0123456789abcdef0123"), "{text}");
    }

    #[test]
    fn trusted_proxy_through_the_authenticator() {
        let auth = Authenticator::new(
            AuthConfig::TrustedProxy {
                trusted_headers: Some(vec!["X-Forwarded-User".into()]),
                default_role: None,
                default_scopes: None,
                allowed_origins: vec![],
            },
            None,
        );
        assert_eq!(
            auth.extra_header_names(),
            vec!["x-forwarded-user", "x-user-scopes", "x-user-role"]
        );
        let principal = auth
            .authenticate(
                &headers(&[
                    ("x-forwarded-user", "carol"),
                    ("x-user-scopes", "run:read"),
                    ("x-smithers-key", "ignored"),
                ]),
                None,
                0,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            principal,
            Principal {
                role: "operator".into(),
                scopes: vec!["run:read".into()],
                user_id: Some("carol".into()),
                token_id: None
            }
        );
        assert_eq!(
            auth.authenticate(&headers(&[("x-forwarded-user", "carol")]), None, 0),
            Err(proxy::MISSING_SCOPES)
        );
    }

    #[test]
    fn debug_redacts_tokens() {
        let text = format!("{:?}", token_auth(&[]));
        assert!(!text.contains("good-token"), "{text}");
    }

    #[test]
    fn error_messages_are_exact() {
        assert_eq!(gates::HOST_NOT_ALLOWED.message, "Host is not allowed");
        assert_eq!(gates::ORIGIN_NOT_ALLOWED.message, "Origin is not allowed");
        assert_eq!(
            gates::COOKIE_ORIGIN_NOT_ALLOWED.message,
            "Origin is not allowed for cookie-authenticated requests"
        );
        assert_eq!(TOKEN_REQUIRED.message, "A bearer token is required");
        assert_eq!(REFRESH_HINT, "smithers token issue");
    }
}
