//! Blocking HTTP calls outside the measured path: launching and cancelling runs, asking the
//! gateway its pid (`health`), checking its workflows, reading /metrics. One short connection per
//! call, every step under a deadline; never used by the epoll loop's hot path.

use crate::wire;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

/// Each call (connect, write, every read) must finish within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

fn exchange(address: SocketAddrV4, request: &[u8]) -> Result<(u16, Vec<u8>)> {
    let deadline = Instant::now() + CALL_TIMEOUT;
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(address), CALL_TIMEOUT)
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_read_timeout(Some(CALL_TIMEOUT))?;
    stream.set_write_timeout(Some(CALL_TIMEOUT))?;
    stream.write_all(request)?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((status, body, _)) =
            wire::parse_http_response(&received).map_err(|e| anyhow!("{address}: {e}"))?
        {
            return Ok((status, received.get(body).unwrap_or_default().to_vec()));
        }
        if Instant::now() > deadline {
            bail!("{address}: no complete answer within {CALL_TIMEOUT:?}");
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("{address}: connection closed before a complete answer");
        }
        received.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// `POST /v1/rpc/<method>` with `params` as the body; the payload on success, the error frame's
/// code and message otherwise.
pub fn rpc(
    address: SocketAddrV4,
    token: Option<&str>,
    method: &str,
    params: &serde_json::Value,
) -> Result<serde_json::Value> {
    let body = params.to_string();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /v1/rpc/{method} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = exchange(address, request.as_bytes())?;
    let frame: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("{method}: HTTP {status} with a body that is not JSON"))?;
    if frame.get("ok").and_then(|v| v.as_bool()) == Some(true) {
        return Ok(frame
            .get("payload")
            .cloned()
            .unwrap_or(serde_json::Value::Null));
    }
    let error = frame.get("error");
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string()
    };
    bail!(
        "{method}: HTTP {status} {} {}",
        field("code"),
        field("message")
    )
}

/// `GET path`: status and body text.
pub fn get(address: SocketAddrV4, path: &str) -> Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let (status, body) = exchange(address, request.as_bytes())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One counter or gauge of the gateway's /metrics.
pub fn metric(address: SocketAddrV4, name: &str) -> Result<f64> {
    let (status, text) = get(address, "/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .ok_or_else(|| anyhow!("/metrics has no {name}"))
}
