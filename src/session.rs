//! `GET /v1/auth/session`: the browser session hand-off (AUTH.md §7). Moves a token from the
//! address bar into an HttpOnly cookie and redirects to a same-origin path.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::auth::AuthError;
use crate::http::request::RequestHead;
use crate::http::response::{Response, CONTENT_TYPE_HTML};
use crate::http::router::query_param;
use crate::rpc::frame::encode_response_error;
use crate::state::GatewayState;

/// `next` reduced to a same-origin path, else `/`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && !path.contains('\\') =>
        {
            path.to_string()
        }
        _ => "/".to_string(),
    }
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

fn page(next: &str) -> Vec<u8> {
    let mut json_next = Vec::new();
    crate::rpc::frame::write_string(&mut json_next, next);
    // `</` cannot end the script early once escaped.
    let script_next = String::from_utf8_lossy(&json_next).replace("</", "<\\/");
    let html_next = escape_html(next);
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={html_next}\"><title>Smithers Gateway</title></head>\n<body><script>window.location.replace({script_next});</script><a href=\"{html_next}\">Continue</a></body></html>\n"
    )
    .into_bytes()
}

fn encode_cookie_value(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for byte in token.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn failure(error: &AuthError) -> Response {
    let rpc_error = crate::runtime::auth_rpc_error(error);
    let id = uuid::Uuid::new_v4().to_string();
    Response::json(
        rpc_error.code.http_status(),
        encode_response_error(&id, &rpc_error),
    )
}

pub fn hand_off(state: &GatewayState, head: &RequestHead) -> Response {
    let query = head.query().unwrap_or_default();
    let next = safe_next(query_param(query, "next").as_deref());
    let authenticator = &state.authenticator;
    if authenticator.is_open() {
        return Response::new(200, CONTENT_TYPE_HTML, page(&next));
    }
    let query_token = query_param(query, "token");
    if let Err(error) =
        authenticator.authenticate(head, query_token.as_deref(), crate::clock::now_ms())
    {
        return failure(&error);
    }
    let response = Response::new(200, CONTENT_TYPE_HTML, page(&next));
    let token = query_token.or_else(|| authenticator.presented_token(head));
    match token {
        Some(token) if authenticator.uses_tokens() => {
            let secure = head
                .header_str("x-forwarded-proto")
                .and_then(|value| value.split(',').next())
                .is_some_and(|first| first.trim().eq_ignore_ascii_case("https"));
            let cookie = format!(
                "{}={}; HttpOnly; Path=/; SameSite=Lax{}",
                crate::auth::session_cookie_name(head.header_str("host")),
                encode_cookie_value(&token),
                if secure { "; Secure" } else { "" }
            );
            response.header("Set-Cookie", cookie)
        }
        _ => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_same_origin() {
        assert_eq!(safe_next(Some("/runs?id=1#x")), "/runs?id=1#x");
        for bad in [
            "//evil.example",
            "/\\evil",
            "https://evil.example",
            "runs",
            "/a\\b",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn page_escapes_next() {
        let html = String::from_utf8_lossy(&page("/a\"</script><b>")).to_string();
        assert!(!html.contains("</script><b>"));
        assert!(html.contains("&quot;&lt;/script&gt;"));
    }
}
