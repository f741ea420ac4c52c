//! The request gates of AUTH.md §2 (Host, Origin, cookie-origin) and the credential lookup of
//! PROTOCOL.md §3 (`connect.params.auth.token` → `x-smithers-key` → `Authorization` → session
//! cookie). Pure string functions of the request headers.
//!
//! Must never: treat a malformed Host/Origin as loopback (when a form is ambiguous it is refused —
//! this is the DNS-rebinding and CSRF defence), put a header value into an error message, or panic
//! on any header bytes.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::{AuthError, HeaderLookup};

pub const HOST_NOT_ALLOWED: AuthError = AuthError {
    message: "Host is not allowed",
    refresh: false,
};
pub const ORIGIN_NOT_ALLOWED: AuthError = AuthError {
    message: "Origin is not allowed",
    refresh: false,
};
pub const COOKIE_ORIGIN_NOT_ALLOWED: AuthError = AuthError {
    message: "Origin is not allowed for cookie-authenticated requests",
    refresh: false,
};

/// Where the credential of a request came from (PROTOCOL.md §3 order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// `connect.params.auth.token` on a WebSocket.
    Explicit,
    /// `x-smithers-key` header.
    Key,
    /// `Authorization` header.
    Authorization,
    /// `smithers_session[_<port>]` cookie.
    Cookie,
}

/// A credential found on a request. Debug never prints the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub token: String,
    pub source: CredentialSource,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("token", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// Header values are looked up by lower-case name; an empty value counts as absent (the reference
/// tests header values for truthiness, and `""` is falsy in JavaScript).
fn non_empty<'a>(headers: &'a dyn HeaderLookup, name: &str) -> Option<&'a str> {
    headers.header(name).filter(|value| !value.is_empty())
}

/// PROTOCOL.md §3: "first hit wins". An explicit `connect` token is used even when empty (it is a
/// string, so the reference takes it; an empty one then fails as "A bearer token is required").
pub fn find_credential(
    headers: &dyn HeaderLookup,
    explicit_token: Option<&str>,
) -> Option<Credential> {
    if let Some(token) = explicit_token {
        return Some(Credential {
            token: token.to_string(),
            source: CredentialSource::Explicit,
        });
    }
    if let Some(key) = non_empty(headers, "x-smithers-key") {
        return Some(Credential {
            token: key.to_string(),
            source: CredentialSource::Key,
        });
    }
    if let Some(value) = non_empty(headers, "authorization") {
        // "if its first 7 characters are `bearer ` (case-insensitive) the rest is the token,
        // otherwise the whole header value is the token".
        let token = match (value.get(..7), value.get(7..)) {
            (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case("bearer ") => rest,
            _ => value,
        };
        return Some(Credential {
            token: token.to_string(),
            source: CredentialSource::Authorization,
        });
    }
    let name = session_cookie_name(headers.header("host"));
    let raw = headers
        .header("cookie")
        .and_then(|cookie| cookie_value(cookie, &name))?;
    let token = percent_decode(raw);
    if token.is_empty() {
        return None;
    }
    Some(Credential {
        token,
        source: CredentialSource::Cookie,
    })
}

/// `smithers_session_<port>`, or `smithers_session` when the Host header has no numeric port
/// (AUTH.md §7). The session hand-off sets the cookie under this same name.
pub fn session_cookie_name(host: Option<&str>) -> String {
    match host
        .and_then(split_host_port)
        .and_then(|(_, port)| port)
        .filter(|port| !port.is_empty())
    {
        Some(port) => format!("smithers_session_{port}"),
        None => "smithers_session".to_string(),
    }
}

/// The value of the first cookie called `name` in a `Cookie: a=b; c=d` header (the first
/// occurrence wins, as in the `cookie` npm parser); surrounding double quotes are removed.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        if key.trim() != name {
            return None;
        }
        let value = value.trim();
        Some(
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value),
        )
    })
}

/// `decodeURIComponent`: `%XX` sequences become bytes; `+` stays `+`. A malformed sequence or a
/// result that is not UTF-8 makes the whole value be used undecoded (the reference's decode would
/// throw; using the raw value can only fail the later exact token comparison).
pub fn percent_decode(raw: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            b'A'..=b'F' => Some(byte - b'A' + 10),
            _ => None,
        }
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut iter = bytes.iter().copied();
    while let Some(byte) = iter.next() {
        if byte != b'%' {
            out.push(byte);
            continue;
        }
        match (iter.next().and_then(hex), iter.next().and_then(hex)) {
            (Some(high), Some(low)) => out.push(high << 4 | low),
            _ => return raw.to_string(),
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| raw.to_string())
}

/// Splits `host[:port]` / `[v6]` / `[v6]:port` / bare IPv6 into host and port text. `None` when the
/// form is malformed (a non-numeric port, an unclosed bracket, junk after `]`).
pub fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    let all_digits = |text: &str| text.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        if !host.contains(':') {
            return None;
        }
        if after.is_empty() {
            return Some((host, None));
        }
        let port = after.strip_prefix(':').filter(|port| all_digits(port))?;
        return Some((host, Some(port)));
    }
    match authority.matches(':').count() {
        0 => Some((authority, None)),
        1 => {
            let (host, port) = authority.split_once(':')?;
            all_digits(port).then_some((host, Some(port)))
        }
        // More than one colon without brackets: a bare IPv6 address, no port.
        _ => Some((authority, None)),
    }
}

/// AUTH.md §2: "Loopback = `localhost`, any `*.localhost`, `::1`, `::ffff:127.0.0.1`, any
/// `127.x.y.z` (dotted quad)". Case-insensitive (hosts are case-insensitive). Other spellings of
/// loopback (`0:0:0:0:0:0:0:1`, `127.1`) are refused: the gate only needs to accept what local
/// browsers send.
pub fn is_loopback_hostname(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    if host == "localhost" || host == "::1" || host == "::ffff:127.0.0.1" {
        return true;
    }
    if host.len() > ".localhost".len() && host.ends_with(".localhost") {
        return true;
    }
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() == 4
        && parts.first() == Some(&"127")
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= 3
                && part.bytes().all(|b| b.is_ascii_digit())
                && part.parse::<u16>().is_ok_and(|n| n <= 255)
        })
}

/// A Host header value (a trailing `:port` ignored, IPv6 possibly bracketed) names a loopback host.
pub fn is_loopback_host_header(host: &str) -> bool {
    split_host_port(host).is_some_and(|(name, _)| is_loopback_hostname(name))
}

/// The parts of an Origin (`scheme://host[:port][/…]`) the gates compare.
#[derive(Debug, PartialEq, Eq)]
pub struct OriginParts {
    pub scheme: String,
    pub host: String,
    pub port: Option<String>,
}

impl OriginParts {
    /// `host[:port]` as `URL.host` prints it: lower-case, the scheme's default port dropped.
    pub fn authority(&self) -> String {
        let default_port = match self.scheme.as_str() {
            "http" | "ws" => Some("80"),
            "https" | "wss" => Some("443"),
            _ => None,
        };
        let bracketed = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port.as_deref() {
            Some(port) if !port.is_empty() && Some(port) != default_port => {
                format!("{bracketed}:{port}")
            }
            _ => bracketed,
        }
    }
}

/// Parses an Origin as a URL: a scheme, `://`, an authority ending at `/`, `?`, `#` or `\` (WHATWG
/// treats `\` as a path separator in special schemes, so it must not be read as part of the host);
/// user info before the last `@` is dropped. Whitespace or control bytes anywhere refuse the value.
pub fn parse_origin(origin: &str) -> Option<OriginParts> {
    if origin.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return None;
    }
    let (scheme, rest) = origin.split_once("://")?;
    let mut scheme_chars = scheme.chars();
    let first_ok = scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let authority = rest.get(..end)?;
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let (host, port) = split_host_port(host_port)?;
    if host.is_empty() {
        return None;
    }
    Some(OriginParts {
        scheme: scheme.to_ascii_lowercase(),
        host: host.to_ascii_lowercase(),
        port: port.map(str::to_string),
    })
}

/// Host gate (AUTH.md §2 rule 1): "the `Host` header, if present and non-empty, must name a loopback
/// host". The caller decides whether the gate is active (no auth, not trust-any-host).
pub fn host_gate(headers: &dyn HeaderLookup) -> Result<(), AuthError> {
    match non_empty(headers, "host") {
        Some(host) if !is_loopback_host_header(host) => Err(HOST_NOT_ALLOWED),
        _ => Ok(()),
    }
}

/// Origin gate with no auth configured and not trust-any-host: "`Origin` absent, empty or the
/// literal `null` passes; otherwise it must parse as a URL whose host is loopback".
pub fn open_origin_gate(headers: &dyn HeaderLookup) -> Result<(), AuthError> {
    match non_empty(headers, "origin") {
        None | Some("null") => Ok(()),
        Some(origin)
            if parse_origin(origin).is_some_and(|parts| is_loopback_hostname(&parts.host)) =>
        {
            Ok(())
        }
        Some(_) => Err(ORIGIN_NOT_ALLOWED),
    }
}

/// Origin gate with auth configured: "if `allowedOrigins` is non-empty, a present `Origin` header
/// must equal one of its entries exactly; absent `Origin` always passes". An empty Origin counts as
/// absent (see `non_empty`).
pub fn configured_origin_gate(
    headers: &dyn HeaderLookup,
    allowed_origins: &[String],
) -> Result<(), AuthError> {
    match non_empty(headers, "origin") {
        Some(origin)
            if !allowed_origins.is_empty()
                && !allowed_origins.iter().any(|allowed| allowed == origin) =>
        {
            Err(ORIGIN_NOT_ALLOWED)
        }
        _ => Ok(()),
    }
}

/// Cookie-origin gate (AUTH.md §2 rule 3), for a request whose only credential is the session
/// cookie: "`Origin` must be absent, empty, `null`, listed in `allowedOrigins`, or have exactly the
/// same host:port as the `Host` header".
pub fn cookie_origin_gate(
    headers: &dyn HeaderLookup,
    allowed_origins: &[String],
) -> Result<(), AuthError> {
    let origin = match non_empty(headers, "origin") {
        None | Some("null") => return Ok(()),
        Some(origin) => origin,
    };
    if allowed_origins.iter().any(|allowed| allowed == origin) {
        return Ok(());
    }
    let same_host = match (parse_origin(origin), non_empty(headers, "host")) {
        (Some(parts), Some(host)) => parts.authority() == host.to_ascii_lowercase(),
        _ => false,
    };
    if same_host {
        Ok(())
    } else {
        Err(COOKIE_ORIGIN_NOT_ALLOWED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost:7331",
            "localhost:",
            "app.localhost",
            "a.b.localhost:80",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.255.255.255",
            "127.1.2.3:1",
            "127.000.0.1",
            "::1",
            "[::1]",
            "[::1]:7331",
            "::ffff:127.0.0.1",
            "[::ffff:127.0.0.1]:9",
            "[::FFFF:127.0.0.1]",
        ] {
            assert!(is_loopback_host_header(host), "{host} should be loopback");
        }
        for host in [
            "",
            "example.com",
            "localhost.example.com",
            "localhostx",
            ".localhost",
            "evil-localhost",
            "localhost.",
            "127.0.0.256",
            "127.0.0",
            "127.0.0.1.5",
            "127.1",
            "128.0.0.1",
            "127.0.0.-1",
            "127.0.0.0001",
            "127.0.0.1:port",
            "127.0.0.1:80:80",
            "0.0.0.0",
            "[::2]",
            "[::1",
            "[::1]x",
            "[::1]:a",
            "[localhost]",
            "::ffff:127.0.0.2",
            "0:0:0:0:0:0:0:1",
            "10.0.0.1",
            "localhost\0",
        ] {
            assert!(
                !is_loopback_host_header(host),
                "{host:?} should not be loopback"
            );
        }
    }

    #[test]
    fn host_gate_forms() {
        assert_eq!(host_gate(&headers(&[])), Ok(()));
        assert_eq!(host_gate(&headers(&[("host", "")])), Ok(()));
        assert_eq!(host_gate(&headers(&[("host", "localhost:1")])), Ok(()));
        assert_eq!(
            host_gate(&headers(&[("host", "evil.com")])),
            Err(HOST_NOT_ALLOWED)
        );
        assert_eq!(
            host_gate(&headers(&[("host", "127.0.0.1.nip.io")])),
            Err(HOST_NOT_ALLOWED)
        );
    }

    #[test]
    fn origin_parsing() {
        let parts = parse_origin("http://LocalHost:7331/path").unwrap_or_else(|| panic!("parse"));
        assert_eq!(
            parts,
            OriginParts {
                scheme: "http".into(),
                host: "localhost".into(),
                port: Some("7331".into())
            }
        );
        assert_eq!(
            parse_origin("https://x.com:443").map(|p| p.authority()),
            Some("x.com".into())
        );
        assert_eq!(
            parse_origin("http://x.com:8080").map(|p| p.authority()),
            Some("x.com:8080".into())
        );
        assert_eq!(
            parse_origin("http://[::1]:8080").map(|p| p.authority()),
            Some("[::1]:8080".into())
        );
        assert_eq!(
            parse_origin("http://user:pw@localhost").map(|p| p.host),
            Some("localhost".into())
        );
        assert_eq!(
            parse_origin("http://localhost@evil.com").map(|p| p.host),
            Some("evil.com".into())
        );
        assert_eq!(
            parse_origin("http://evil.com\\@localhost").map(|p| p.host),
            Some("evil.com".into())
        );
        assert_eq!(
            parse_origin("http://evil.com#@localhost").map(|p| p.host),
            Some("evil.com".into())
        );
        assert_eq!(
            parse_origin("http://evil.com?@localhost").map(|p| p.host),
            Some("evil.com".into())
        );
        for bad in [
            "localhost",
            "://localhost",
            "1http://localhost",
            "http://",
            "http://:80",
            "http:// localhost",
            "http://localhost:x",
        ] {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn open_origin_gate_forms() {
        for ok in [
            "",
            "null",
            "http://localhost",
            "http://localhost:3000",
            "https://app.localhost",
            "http://127.0.0.1:1",
            "http://[::1]:5173",
            "vscode-webview://localhost",
        ] {
            let h = if ok.is_empty() {
                headers(&[("origin", "")])
            } else {
                headers(&[("origin", ok)])
            };
            assert_eq!(open_origin_gate(&h), Ok(()), "{ok}");
        }
        assert_eq!(open_origin_gate(&headers(&[])), Ok(()));
        for bad in [
            "http://evil.com",
            "NULL",
            "localhost",
            "http://localhost.evil.com",
            "http://127.0.0.1.evil.com",
            "file://",
            "http://evil.com\\@localhost",
            "garbage",
        ] {
            assert_eq!(
                open_origin_gate(&headers(&[("origin", bad)])),
                Err(ORIGIN_NOT_ALLOWED),
                "{bad}"
            );
        }
    }

    #[test]
    fn configured_origin_gate_forms() {
        let list = vec!["https://app.example.com".to_string()];
        assert_eq!(configured_origin_gate(&headers(&[]), &list), Ok(()));
        assert_eq!(
            configured_origin_gate(&headers(&[("origin", "")]), &list),
            Ok(())
        );
        assert_eq!(
            configured_origin_gate(&headers(&[("origin", "https://app.example.com")]), &list),
            Ok(())
        );
        assert_eq!(
            configured_origin_gate(&headers(&[("origin", "https://app.example.com/")]), &list),
            Err(ORIGIN_NOT_ALLOWED)
        );
        assert_eq!(
            configured_origin_gate(&headers(&[("origin", "HTTPS://app.example.com")]), &list),
            Err(ORIGIN_NOT_ALLOWED)
        );
        assert_eq!(
            configured_origin_gate(&headers(&[("origin", "null")]), &list),
            Err(ORIGIN_NOT_ALLOWED)
        );
        assert_eq!(
            configured_origin_gate(&headers(&[("origin", "http://evil.com")]), &[]),
            Ok(())
        );
    }

    #[test]
    fn cookie_origin_gate_forms() {
        let list = vec!["https://app.example.com".to_string()];
        let gate = |pairs: &[(&str, &str)]| cookie_origin_gate(&headers(pairs), &list);
        assert_eq!(gate(&[]), Ok(()));
        assert_eq!(gate(&[("origin", "")]), Ok(()));
        assert_eq!(gate(&[("origin", "null")]), Ok(()));
        assert_eq!(gate(&[("origin", "https://app.example.com")]), Ok(()));
        assert_eq!(
            gate(&[
                ("origin", "http://gw.example.com:7331"),
                ("host", "gw.example.com:7331")
            ]),
            Ok(())
        );
        assert_eq!(
            gate(&[
                ("origin", "https://gw.example.com"),
                ("host", "gw.example.com")
            ]),
            Ok(())
        );
        assert_eq!(
            gate(&[
                ("origin", "https://GW.example.com"),
                ("host", "gw.EXAMPLE.com")
            ]),
            Ok(())
        );
        assert_eq!(
            gate(&[
                ("origin", "http://gw.example.com:7332"),
                ("host", "gw.example.com:7331")
            ]),
            Err(COOKIE_ORIGIN_NOT_ALLOWED)
        );
        assert_eq!(
            gate(&[
                ("origin", "http://gw.example.com"),
                ("host", "gw.example.com:7331")
            ]),
            Err(COOKIE_ORIGIN_NOT_ALLOWED)
        );
        assert_eq!(
            gate(&[("origin", "http://evil.com"), ("host", "gw.example.com")]),
            Err(COOKIE_ORIGIN_NOT_ALLOWED)
        );
        assert_eq!(
            gate(&[("origin", "http://gw.example.com")]),
            Err(COOKIE_ORIGIN_NOT_ALLOWED)
        );
        assert_eq!(
            gate(&[("origin", "garbage"), ("host", "garbage")]),
            Err(COOKIE_ORIGIN_NOT_ALLOWED)
        );
    }

    #[test]
    fn credential_lookup_order() {
        let all = headers(&[
            ("host", "localhost:7331"),
            ("x-smithers-key", "key-token"),
            ("authorization", "Bearer auth-token"),
            ("cookie", "smithers_session_7331=cookie-token"),
        ]);
        let found = |h: &Vec<(String, String)>, explicit: Option<&str>| {
            find_credential(h, explicit).map(|c| (c.token, c.source))
        };
        assert_eq!(
            found(&all, Some("explicit")),
            Some(("explicit".into(), CredentialSource::Explicit))
        );
        assert_eq!(
            found(&all, Some("")),
            Some(("".into(), CredentialSource::Explicit))
        );
        assert_eq!(
            found(&all, None),
            Some(("key-token".into(), CredentialSource::Key))
        );
        let no_key: Vec<_> = all
            .iter()
            .filter(|(k, _)| k != "x-smithers-key")
            .cloned()
            .collect();
        assert_eq!(
            found(&no_key, None),
            Some(("auth-token".into(), CredentialSource::Authorization))
        );
        let cookie_only: Vec<_> = no_key
            .iter()
            .filter(|(k, _)| k != "authorization")
            .cloned()
            .collect();
        assert_eq!(
            found(&cookie_only, None),
            Some(("cookie-token".into(), CredentialSource::Cookie))
        );
        assert_eq!(found(&headers(&[("host", "localhost")]), None), None);
        // Empty header values are absent.
        let empty_key = headers(&[("x-smithers-key", ""), ("authorization", "bearer t")]);
        assert_eq!(
            found(&empty_key, None),
            Some(("t".into(), CredentialSource::Authorization))
        );
    }

    #[test]
    fn authorization_forms() {
        let token = |value: &str| {
            find_credential(&headers(&[("authorization", value)]), None).map(|c| c.token)
        };
        assert_eq!(token("Bearer abc"), Some("abc".into()));
        assert_eq!(token("bearer abc"), Some("abc".into()));
        assert_eq!(token("BEARER abc"), Some("abc".into()));
        assert_eq!(token("Bearer  abc"), Some(" abc".into()));
        assert_eq!(token("Bearer "), Some("".into()));
        assert_eq!(token("Bearerabc"), Some("Bearerabc".into()));
        assert_eq!(token("Basic abc"), Some("Basic abc".into()));
        assert_eq!(token("abc"), Some("abc".into()));
        assert_eq!(token("béarer x"), Some("béarer x".into()));
        assert_eq!(token("€€€"), Some("€€€".into()));
    }

    #[test]
    fn cookie_names_and_decoding() {
        assert_eq!(
            session_cookie_name(Some("localhost:7331")),
            "smithers_session_7331"
        );
        assert_eq!(
            session_cookie_name(Some("[::1]:9000")),
            "smithers_session_9000"
        );
        assert_eq!(
            session_cookie_name(Some("gw.example.com")),
            "smithers_session"
        );
        assert_eq!(
            session_cookie_name(Some("gw.example.com:")),
            "smithers_session"
        );
        assert_eq!(
            session_cookie_name(Some("gw.example.com:abc")),
            "smithers_session"
        );
        assert_eq!(session_cookie_name(None), "smithers_session");
        let lookup = |host: &str, cookie: &str| {
            find_credential(&headers(&[("host", host), ("cookie", cookie)]), None)
                .map(|c| (c.token, c.source))
        };
        assert_eq!(
            lookup(
                "localhost:7331",
                "a=b; smithers_session_7331=t%2Fo%3Dk+x; c=d"
            ),
            Some(("t/o=k+x".into(), CredentialSource::Cookie))
        );
        assert_eq!(
            lookup("localhost:7331", "smithers_session=wrong-port"),
            None
        );
        assert_eq!(
            lookup("gw.example.com", "smithers_session=plain"),
            Some(("plain".into(), CredentialSource::Cookie))
        );
        assert_eq!(lookup("gw.example.com", "smithers_session_80=x"), None);
        assert_eq!(
            lookup(
                "localhost:1",
                "smithers_session_1=first; smithers_session_1=second"
            ),
            Some(("first".into(), CredentialSource::Cookie))
        );
        assert_eq!(
            lookup("localhost:1", "smithers_session_1=\"quoted\""),
            Some(("quoted".into(), CredentialSource::Cookie))
        );
        assert_eq!(lookup("localhost:1", "smithers_session_1="), None);
        assert_eq!(
            lookup("localhost:1", "smithers_session_1=%zz"),
            Some(("%zz".into(), CredentialSource::Cookie))
        );
        assert_eq!(
            lookup("localhost:1", "smithers_session_1=%E2%82%AC"),
            Some(("€".into(), CredentialSource::Cookie))
        );
        assert_eq!(
            lookup("localhost:1", "smithers_session_1=%FF"),
            Some(("%FF".into(), CredentialSource::Cookie))
        );
        assert_eq!(lookup("localhost:1", "garbage;;=;smithers_session_1"), None);
    }

    #[test]
    fn credential_debug_redacts() {
        let credential = Credential {
            token: "super-secret".into(),
            source: CredentialSource::Key,
        };
        assert!(!format!("{credential:?}").contains("super-secret"));
    }
}
