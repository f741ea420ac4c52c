//! Trusted-proxy mode (AUTH.md §3.3): the identity comes from headers a fronting proxy sets
//! (user, scopes, role, token id). No token is read.
//!
//! Must never: grant an implicit `*` — a request without the scopes header and without configured
//! `defaultScopes` is refused ("fail closed"). Only safe behind a proxy that strips and rewrites
//! these headers; that is a deployment rule, not something this module can check.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::{AuthError, HeaderLookup, Principal};

pub const MISSING_SCOPES: AuthError = AuthError {
    message:
        "trusted-proxy request is missing the user scopes header and no defaultScopes is configured",
    refresh: false,
};

/// Default header names for the positions [user, scopes, role].
pub const DEFAULT_TRUSTED_HEADERS: [&str; 3] = ["x-user-id", "x-user-scopes", "x-user-role"];

/// The header carrying the proxy's token id.
pub const TOKEN_ID_HEADER: &str = "x-smithers-token-id";

/// Splits a scope list "on runs of commas and/or whitespace, empties dropped" (AUTH.md §3.2/§3.3).
pub fn split_scopes(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|part| !part.is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Clone, Debug)]
pub struct ProxyAuth {
    user_header: String,
    scopes_header: String,
    role_header: String,
    default_role: Option<String>,
    default_scopes: Option<Vec<String>>,
}

impl ProxyAuth {
    /// `trustedHeaders` "positions mean [user, scopes, role], lower-cased"; a missing or empty
    /// position keeps its default name.
    pub fn new(
        trusted_headers: Option<&[String]>,
        default_role: Option<String>,
        default_scopes: Option<Vec<String>>,
    ) -> ProxyAuth {
        let configured = trusted_headers.unwrap_or(&[]);
        let name = |position: usize, default: &str| {
            configured
                .get(position)
                .map(|name| name.trim().to_ascii_lowercase())
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        let [user, scopes, role] = DEFAULT_TRUSTED_HEADERS;
        ProxyAuth {
            user_header: name(0, user),
            scopes_header: name(1, scopes),
            role_header: name(2, role),
            default_role,
            default_scopes,
        }
    }

    /// The header names this mode reads (a WebSocket keeps them from its upgrade request).
    pub fn header_names(&self) -> Vec<String> {
        vec![
            self.user_header.clone(),
            self.scopes_header.clone(),
            self.role_header.clone(),
        ]
    }

    pub fn authenticate(&self, headers: &dyn HeaderLookup) -> Result<Principal, AuthError> {
        let present = |name: &str| {
            headers
                .header(name)
                .filter(|value| !value.is_empty())
                .map(str::to_string)
        };
        // A header that splits to nothing (" , ") is treated as empty: fail closed the same way.
        let from_header = headers
            .header(&self.scopes_header)
            .map(split_scopes)
            .filter(|scopes| !scopes.is_empty());
        let scopes = match (from_header, &self.default_scopes) {
            (Some(scopes), _) => scopes,
            // "if configured, `defaultScopes` (even an empty list) is used".
            (None, Some(defaults)) => defaults.clone(),
            (None, None) => return Err(MISSING_SCOPES),
        };
        Ok(Principal {
            role: present(&self.role_header)
                .or_else(|| self.default_role.clone())
                .unwrap_or_else(|| "operator".to_string()),
            scopes,
            user_id: present(&self.user_header),
            token_id: present(TOKEN_ID_HEADER),
        })
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
    fn default_headers_map_identity() {
        let proxy = ProxyAuth::new(None, None, None);
        assert_eq!(
            proxy.header_names(),
            vec!["x-user-id", "x-user-scopes", "x-user-role"]
        );
        let principal = proxy
            .authenticate(&headers(&[
                ("x-user-id", "alice"),
                ("x-user-scopes", "run:read, run:write  cron:read,,"),
                ("x-user-role", "admin"),
                ("x-smithers-token-id", "tid-1"),
            ]))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            principal,
            Principal {
                role: "admin".into(),
                scopes: vec!["run:read".into(), "run:write".into(), "cron:read".into()],
                user_id: Some("alice".into()),
                token_id: Some("tid-1".into()),
            }
        );
    }

    #[test]
    fn missing_scopes_fail_closed_without_defaults() {
        let proxy = ProxyAuth::new(None, None, None);
        assert_eq!(
            proxy.authenticate(&headers(&[("x-user-id", "alice")])),
            Err(MISSING_SCOPES)
        );
        assert_eq!(
            proxy.authenticate(&headers(&[("x-user-scopes", "")])),
            Err(MISSING_SCOPES)
        );
        assert_eq!(
            proxy.authenticate(&headers(&[("x-user-scopes", " , ")])),
            Err(MISSING_SCOPES)
        );
    }

    #[test]
    fn defaults_apply_even_when_empty() {
        let proxy = ProxyAuth::new(None, Some("viewer".into()), Some(vec![]));
        let principal = proxy
            .authenticate(&headers(&[]))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            principal,
            Principal {
                role: "viewer".into(),
                scopes: vec![],
                user_id: None,
                token_id: None
            }
        );
        let proxy = ProxyAuth::new(None, None, Some(vec!["run:read".into()]));
        let principal = proxy
            .authenticate(&headers(&[("x-user-role", "")]))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(principal.role, "operator");
        assert_eq!(principal.scopes, vec!["run:read".to_string()]);
        // The header wins over the defaults.
        let principal = proxy
            .authenticate(&headers(&[("x-user-scopes", "*")]))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(principal.scopes, vec!["*".to_string()]);
    }

    #[test]
    fn configured_headers_are_lower_cased_by_position() {
        let proxy = ProxyAuth::new(
            Some(&["X-Auth-User".into(), "X-Auth-Scopes".into()]),
            None,
            None,
        );
        assert_eq!(
            proxy.header_names(),
            vec!["x-auth-user", "x-auth-scopes", "x-user-role"]
        );
        let principal = proxy
            .authenticate(&headers(&[
                ("x-auth-user", "bob"),
                ("x-auth-scopes", "run:read"),
                ("x-user-id", "mallory"),
            ]))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(principal.user_id.as_deref(), Some("bob"));
        assert_eq!(
            proxy.authenticate(&headers(&[("x-user-scopes", "*")])),
            Err(MISSING_SCOPES)
        );
    }

    #[test]
    fn split_scopes_forms() {
        assert_eq!(split_scopes("a b\tc\n,d,,e"), vec!["a", "b", "c", "d", "e"]);
        assert!(split_scopes("").is_empty());
        assert!(split_scopes(" ,\t, ").is_empty());
    }
}
