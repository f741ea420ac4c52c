//! The reference's route table, evaluated first-match in its order (PROTOCOL.md §2). "exact"
//! routes compare the raw target (a query string makes them miss); the others compare the path.
//! WebSocket upgrades do not pass through here: any upgrade request is an RPC socket.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::request::Method;

/// Which handler a (non-upgrade) request goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    Workflows,
    AuthSession,
    Webhook {
        workflow_key: String,
    },
    ApiStream,
    Api,
    /// `POST /v1/rpc/<method>`, method percent-decoded (None when it does not decode to UTF-8).
    RpcUrl {
        method: Option<String>,
    },
    ElectricWrite,
    RpcBody,
    Index,
    NotFound,
}

pub fn route(method: Method, target: &str) -> Route {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let is_get = method == Method::Get;
    if is_get && target == "/health" {
        return Route::Health;
    }
    if is_get && target == "/metrics" {
        return Route::Metrics;
    }
    if is_get && target == "/workflows" {
        return Route::Workflows;
    }
    if is_get && path == "/v1/auth/session" {
        return Route::AuthSession;
    }
    if method == Method::Post {
        if let Some(key) = path.strip_prefix("/webhooks/") {
            if !key.is_empty() && !key.contains('/') {
                return Route::Webhook {
                    workflow_key: percent_decode(key).unwrap_or_else(|| key.to_string()),
                };
            }
        }
    }
    if is_get && path == "/v1/api/stream" {
        return Route::ApiStream;
    }
    if path == "/v1/api" || path.starts_with("/v1/api/") {
        return Route::Api;
    }
    if method == Method::Post {
        if let Some(name) = path.strip_prefix("/v1/rpc/") {
            if !name.is_empty() && !name.contains('/') {
                return Route::RpcUrl {
                    method: percent_decode(name),
                };
            }
        }
        if path == "/v1/electric/write" {
            return Route::ElectricWrite;
        }
        if target == "/rpc" {
            return Route::RpcBody;
        }
    }
    if is_get && path == "/" {
        return Route::Index;
    }
    Route::NotFound
}

/// Percent-decodes a URL segment; None when an escape is malformed or the result is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%' {
            let high = bytes
                .get(index + 1)
                .and_then(|b| (*b as char).to_digit(16))?;
            let low = bytes
                .get(index + 2)
                .and_then(|b| (*b as char).to_digit(16))?;
            out.push((high * 16 + low) as u8);
            index += 3;
        } else {
            out.push(byte);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The first value of `name` in a query string, decoded as `URLSearchParams` does (`+` is a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(&key.replace('+', " "))?;
        (key == name)
            .then(|| percent_decode(&value.replace('+', " ")).unwrap_or_else(|| value.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_in_the_reference_order() {
        let cases: &[(Method, &str, Route)] = &[
            (Method::Get, "/health", Route::Health),
            (Method::Get, "/health?x=1", Route::NotFound),
            (Method::Post, "/health", Route::NotFound),
            (Method::Get, "/metrics", Route::Metrics),
            (Method::Get, "/workflows", Route::Workflows),
            (Method::Get, "/v1/auth/session?token=a", Route::AuthSession),
            (
                Method::Post,
                "/webhooks/deploy",
                Route::Webhook {
                    workflow_key: "deploy".into(),
                },
            ),
            (Method::Get, "/v1/api/stream", Route::ApiStream),
            (Method::Get, "/v1/api/runs", Route::Api),
            (Method::Delete, "/v1/api", Route::Api),
            (
                Method::Post,
                "/v1/rpc/getRun",
                Route::RpcUrl {
                    method: Some("getRun".into()),
                },
            ),
            (
                Method::Post,
                "/v1/rpc/get%52un?x",
                Route::RpcUrl {
                    method: Some("getRun".into()),
                },
            ),
            (Method::Post, "/v1/rpc/%ff", Route::RpcUrl { method: None }),
            (Method::Get, "/v1/rpc/getRun", Route::NotFound),
            (Method::Post, "/v1/electric/write", Route::ElectricWrite),
            (Method::Post, "/rpc", Route::RpcBody),
            (Method::Post, "/rpc?x=1", Route::NotFound),
            (Method::Get, "/", Route::Index),
            (Method::Get, "/?a=b", Route::Index),
            (Method::Options, "/", Route::NotFound),
            (Method::Get, "/nothing", Route::NotFound),
        ];
        for (method, target, expected) in cases {
            assert_eq!(&route(*method, target), expected, "{method:?} {target}");
        }
    }

    #[test]
    fn percent_decoding_refuses_malformed_escapes() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
    }

    #[test]
    fn query_params_decode_like_url_search_params() {
        assert_eq!(
            query_param("token=a%2Bb&next=%2Fruns", "token").as_deref(),
            Some("a+b")
        );
        assert_eq!(query_param("token=a+b", "token").as_deref(), Some("a b"));
        assert_eq!(
            query_param("next=/x&next=/y", "next").as_deref(),
            Some("/x")
        );
        assert_eq!(query_param("a=1", "token"), None);
        assert_eq!(query_param("flag", "flag").as_deref(), Some(""));
    }
}
