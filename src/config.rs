//! Settings and every limit in one place, with their defaults (docs/LIMITS.md lists each one with
//! the test that proves it). The config file is TOML with the reference gateway's option names
//! (camelCase); command-line flags override it.
//!
//! Nothing here does IO except `Config::load`, which reads the file once at start.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Largest server frame head: 2 bytes + 8 bytes extended length (servers never mask).
pub const SERVER_FRAME_HEAD_BYTES_MAX: usize = 10;
/// Largest client frame head: 2 bytes + 8 bytes extended length + 4 bytes mask.
pub const CLIENT_FRAME_HEAD_BYTES_MAX: usize = 14;
const _: () = assert!(CLIENT_FRAME_HEAD_BYTES_MAX == SERVER_FRAME_HEAD_BYTES_MAX + 4);

/// RPC frame bounds, fixed by the protocol (PROTOCOL.md §16).
pub const FRAME_DEPTH_MAX: usize = 32;
pub const FRAME_ARRAY_ITEMS_MAX: usize = 256;
pub const FRAME_STRING_UTF16_MAX: usize = 16_384;
pub const FRAME_ID_CHARS_MAX: usize = 128;
pub const METHOD_NAME_CHARS_MAX: usize = 64;
pub const STARTED_BY_PROMPT_CHARS_MAX: usize = 8_192;

/// Which monoio driver the workers run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DriverKind {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring only; start-up fails when it is unavailable.
    IoUring,
    /// epoll (monoio's legacy driver).
    Legacy,
}

/// SQLite `synchronous` for the store (RELIABILITY.md §4): FULL survives power loss with WAL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

/// One static bearer token's grant (AUTH.md §3.1).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenGrant {
    pub role: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub token_id: Option<String>,
    #[serde(default)]
    pub issued_at_ms: Option<u64>,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    #[serde(default)]
    pub revoked_at_ms: Option<u64>,
}

/// A string or a list of strings (JWT `audience`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(value) => vec![value.clone()],
            OneOrMany::Many(values) => values.clone(),
        }
    }
}

/// The `auth` table: one mode (AUTH.md §3). Absent means "generate and print an admin token".
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum AuthConfig {
    /// No authentication: every caller is `operator` with `*`, behind the Host/Origin gates.
    #[serde(rename_all = "camelCase")]
    None {
        /// Trust any Host header (the reference's insecure mode).
        #[serde(default)]
        trust_any_host: bool,
    },
    #[serde(rename_all = "camelCase")]
    Token {
        tokens: BTreeMap<String, TokenGrant>,
        #[serde(default)]
        allowed_origins: Vec<String>,
    },
    #[serde(rename_all = "camelCase")]
    Jwt {
        issuer: String,
        audience: OneOrMany,
        secret: String,
        #[serde(default)]
        scopes_claim: Option<String>,
        #[serde(default)]
        role_claim: Option<String>,
        #[serde(default)]
        user_claim: Option<String>,
        #[serde(default)]
        default_role: Option<String>,
        #[serde(default)]
        default_scopes: Option<Vec<String>>,
        #[serde(default)]
        clock_skew_seconds: Option<i64>,
        /// Accept tokens without `exp`, as the reference does (docs/DECISIONS.md). Default false.
        #[serde(default)]
        allow_missing_exp: bool,
        #[serde(default)]
        allowed_origins: Vec<String>,
    },
    #[serde(rename = "trusted-proxy", rename_all = "camelCase")]
    TrustedProxy {
        #[serde(default)]
        trusted_headers: Option<Vec<String>>,
        #[serde(default)]
        default_role: Option<String>,
        #[serde(default)]
        default_scopes: Option<Vec<String>>,
        #[serde(default)]
        allowed_origins: Vec<String>,
    },
}

/// Every gateway option of PROTOCOL.md §16 plus our transport limits. Field names in the file are
/// the reference's (camelCase); units are in the Rust names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub protocol: u32,
    pub features: Vec<String>,
    #[serde(rename = "heartbeatMs")]
    pub heartbeat_ms: u64,
    #[serde(rename = "maxBodyBytes")]
    pub body_bytes_max: usize,
    #[serde(rename = "maxPayload")]
    pub message_bytes_max: usize,
    #[serde(rename = "maxConnections")]
    pub connections_max: usize,
    #[serde(rename = "maxPreAuthConnections")]
    pub pre_auth_connections_max: usize,
    /// Every accepted TCP connection (HTTP or WebSocket); past it new sockets are closed at once.
    #[serde(rename = "maxSockets")]
    pub sockets_max: usize,
    #[serde(rename = "authDeadlineMs")]
    pub auth_deadline_ms: u64,
    pub event_window_size: usize,
    /// Absolute deadline for a request head, from its first byte (Node `headersTimeout`).
    #[serde(rename = "headersTimeout")]
    pub headers_timeout_ms: u64,
    /// Absolute deadline for a whole request, head and body (Node `requestTimeout`).
    #[serde(rename = "requestTimeout")]
    pub request_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this long without a new request.
    #[serde(rename = "keepAliveTimeout")]
    pub keep_alive_timeout_ms: u64,
    #[serde(rename = "maxHeaderCount")]
    pub header_count_max: usize,
    #[serde(rename = "maxHeaderBytes")]
    pub header_bytes_max: usize,
    #[serde(rename = "maxRequestLineBytes")]
    pub request_line_bytes_max: usize,
    /// Bytes queued for one connection before it is closed (1013 on WebSockets).
    #[serde(rename = "maxOutboundBytes")]
    pub outbound_bytes_max: usize,
    /// Kernel send buffer per socket (SO_SNDBUF), so slow readers show in our queue.
    #[serde(rename = "socketSendBufferBytes")]
    pub socket_send_buffer_bytes: usize,
    /// Requests one WebSocket may have in flight; past it the socket is not read until one ends.
    #[serde(rename = "maxRequestsInFlight")]
    pub requests_in_flight_max: usize,
    /// How long shutdown waits for in-flight requests before closing everything.
    #[serde(rename = "shutdownGraceMs")]
    pub shutdown_grace_ms: u64,
    /// Mount path of the operator console (served by a later issue).
    #[serde(rename = "uiPath")]
    pub ui_path: String,
    /// SQLite durability: `full` (default) or `normal`.
    pub synchronous: Synchronous,
    /// `identity.workspaceRoot` in health and hello.
    pub workspace_root: Option<String>,
    pub auth: Option<AuthConfig>,
    /// `getNodeOutput`/`getNodeDiff` size caps (METHODS.md §3.20–3.21). Fixed by the protocol,
    /// so not in the file; tests lower them to prove them.
    #[serde(skip)]
    pub node_limits: crate::devtools::node::NodeLimits,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            protocol: 1,
            features: vec!["streaming".into(), "runs".into()],
            heartbeat_ms: 15_000,
            body_bytes_max: 1_048_576,
            message_bytes_max: 1_048_576,
            connections_max: 1_000,
            pre_auth_connections_max: 64,
            sockets_max: 19_000,
            auth_deadline_ms: 10_000,
            event_window_size: 10_000,
            headers_timeout_ms: 30_000,
            request_timeout_ms: 60_000,
            keep_alive_timeout_ms: 60_000,
            header_count_max: 100,
            header_bytes_max: 16 * 1024,
            request_line_bytes_max: 8 * 1024,
            outbound_bytes_max: 32 * 1024 * 1024,
            socket_send_buffer_bytes: 64 * 1024,
            requests_in_flight_max: 64,
            shutdown_grace_ms: 5_000,
            ui_path: "/console".into(),
            synchronous: Synchronous::Full,
            workspace_root: None,
            auth: None,
            node_limits: crate::devtools::node::NodeLimits::default(),
        }
    }
}

/// Settings only the file (or flags) give: where to listen and store.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub workers: Option<usize>,
    pub data_dir: Option<PathBuf>,
    pub driver: Option<DriverKind>,
    pub workflows_dir: Option<PathBuf>,
    pub gateway: GatewayConfig,
}

/// The resolved configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub workers: usize,
    pub data_dir: PathBuf,
    pub driver: DriverKind,
    pub gateway: GatewayConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7331";

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        FileConfig::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML. Gateway options may sit at the top level or under `[gateway]`.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut file = FileConfig::default();
        let take = |table: &mut toml::Table, key: &str| table.remove(key);
        if let Some(value) = take(&mut table, "listen") {
            file.listen = Some(
                value
                    .try_into()
                    .map_err(|e: toml::de::Error| format!("listen: {e}"))?,
            );
        }
        if let Some(value) = take(&mut table, "workers") {
            file.workers = Some(
                value
                    .try_into()
                    .map_err(|e: toml::de::Error| format!("workers: {e}"))?,
            );
        }
        if let Some(value) = take(&mut table, "dataDir") {
            file.data_dir = Some(
                value
                    .try_into()
                    .map_err(|e: toml::de::Error| format!("dataDir: {e}"))?,
            );
        }
        if let Some(value) = take(&mut table, "workflowsDir") {
            file.workflows_dir = Some(
                value
                    .try_into()
                    .map_err(|e: toml::de::Error| format!("workflowsDir: {e}"))?,
            );
        }
        if let Some(value) = take(&mut table, "driver") {
            file.driver = Some(
                value
                    .try_into()
                    .map_err(|e: toml::de::Error| format!("driver: {e}"))?,
            );
        }
        let gateway_table = match take(&mut table, "gateway") {
            Some(toml::Value::Table(inner)) => {
                if !table.is_empty() {
                    return Err("gateway options must be either at the top level or under [gateway], not both".into());
                }
                inner
            }
            Some(_) => return Err("gateway must be a table".into()),
            None => table,
        };
        file.gateway = toml::Value::Table(gateway_table)
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        Ok(file)
    }
}

impl GatewayConfig {
    /// Checks relationships between limits; called once at start and by tests.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                name,
                reason: reason.into(),
            })
        };
        if self.protocol == 0 {
            return invalid("protocol", "must be at least 1");
        }
        if self.heartbeat_ms == 0 {
            return invalid("heartbeatMs", "must be at least 1");
        }
        if self.message_bytes_max == 0 || self.body_bytes_max == 0 {
            return invalid("maxPayload/maxBodyBytes", "must be at least 1");
        }
        if self.connections_max == 0 || self.pre_auth_connections_max == 0 {
            return invalid("maxConnections/maxPreAuthConnections", "must be at least 1");
        }
        if self.sockets_max < self.connections_max {
            return invalid("maxSockets", "must be at least maxConnections");
        }
        if self.header_count_max == 0
            || self.header_bytes_max < 64
            || self.request_line_bytes_max < 16
        {
            return invalid(
                "maxHeaderCount/maxHeaderBytes/maxRequestLineBytes",
                "too small to carry a request",
            );
        }
        if self.request_line_bytes_max > self.header_bytes_max {
            return invalid("maxRequestLineBytes", "must not exceed maxHeaderBytes");
        }
        if self.headers_timeout_ms == 0 || self.request_timeout_ms < self.headers_timeout_ms {
            return invalid(
                "requestTimeout",
                "must be at least headersTimeout, which must be positive",
            );
        }
        if self.outbound_bytes_max < self.message_bytes_max.min(1 << 20) {
            return invalid("maxOutboundBytes", "must hold at least one message");
        }
        if self.requests_in_flight_max == 0 {
            return invalid("maxRequestsInFlight", "must be at least 1");
        }
        if !self.ui_path.starts_with('/') {
            return invalid("uiPath", "must start with /");
        }
        if let Some(AuthConfig::Token { tokens, .. }) = &self.auth {
            if tokens.keys().any(|token| token.is_empty()) {
                return invalid("auth.tokens", "a token must not be empty");
            }
        }
        if let Some(AuthConfig::Jwt { secret, .. }) = &self.auth {
            if secret.len() < 16 {
                return invalid("auth.secret", "an HS256 secret must be at least 16 bytes");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_values() {
        let config = GatewayConfig::default();
        assert_eq!(config.heartbeat_ms, 15_000);
        assert_eq!(config.body_bytes_max, 1_048_576);
        assert_eq!(config.message_bytes_max, 1_048_576);
        assert_eq!(config.connections_max, 1_000);
        assert_eq!(config.pre_auth_connections_max, 64);
        assert_eq!(config.auth_deadline_ms, 10_000);
        assert_eq!(config.event_window_size, 10_000);
        assert_eq!(
            config.features,
            vec!["streaming".to_string(), "runs".to_string()]
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn parses_every_auth_mode_and_limits() {
        let file = FileConfig::parse(
            r#"
            listen = "127.0.0.1:9000"
            heartbeatMs = 250
            maxPayload = 4096
            [auth]
            mode = "jwt"
            issuer = "smithers"
            audience = ["gateway", "other"]
            secret = "0123456789abcdef0123"
            clockSkewSeconds = 30
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            file.listen,
            Some("127.0.0.1:9000".parse().unwrap_or_else(|e| panic!("{e}")))
        );
        assert_eq!(file.gateway.heartbeat_ms, 250);
        assert_eq!(file.gateway.message_bytes_max, 4096);
        match file.gateway.auth {
            Some(AuthConfig::Jwt {
                audience,
                clock_skew_seconds,
                ..
            }) => {
                assert_eq!(
                    audience.to_vec(),
                    vec!["gateway".to_string(), "other".to_string()]
                );
                assert_eq!(clock_skew_seconds, Some(30));
            }
            other => panic!("unexpected auth {other:?}"),
        }
        let proxy =
            FileConfig::parse("[gateway.auth]\nmode = \"trusted-proxy\"\ndefaultScopes = []\n")
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(proxy.gateway.auth, Some(AuthConfig::TrustedProxy { default_scopes: Some(ref s), .. }) if s.is_empty())
        );
        let tokens = FileConfig::parse(
            "[auth]\nmode = \"token\"\n[auth.tokens.abc]\nrole = \"admin\"\nscopes = [\"*\"]\nexpiresAtMs = 5\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(tokens.gateway.auth, Some(AuthConfig::Token { ref tokens, .. }) if tokens["abc"].expires_at_ms == Some(5))
        );
    }

    #[test]
    fn rejects_unknown_options_and_bad_modes() {
        assert!(FileConfig::parse("heartbeatMillis = 5").is_err());
        assert!(FileConfig::parse("[auth]\nmode = \"magic\"\n").is_err());
        let mut config = GatewayConfig {
            request_timeout_ms: 10,
            headers_timeout_ms: 20,
            ..GatewayConfig::default()
        };
        assert!(config.validate().is_err());
        config.request_timeout_ms = 20;
        assert!(config.validate().is_ok());
    }
}
