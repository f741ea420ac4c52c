//! WebSocket limits and closes (PROTOCOL.md §5.1, §15; RELIABILITY.md §6 rows 3–4): maxPayload
//! closes with 1009, deflate is never negotiated and RSV1 closes with 1002, the outbound byte bound
//! closes with 1013, and shutdown closes with 1001.

use crate::support::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;

/// A message one byte over maxPayload closes the socket with 1009; at the limit it is answered.
#[test]
fn message_over_max_payload_closes_with_1009() {
    let gateway = Gateway::start(|c| c.message_bytes_max = 4096);
    let (mut ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
    // Exactly at the limit: a valid request padded with spaces to 4,096 bytes.
    let mut text = r#"{"type":"req","id":"at-limit","method":"health","params":{}}"#.to_string();
    text.push_str(&" ".repeat(4096 - text.len()));
    assert_eq!(text.len(), 4096);
    ws.send(tungstenite::Message::text(text))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recv_response(&mut ws, "at-limit").0["ok"], true);
    ws.send(tungstenite::Message::binary(vec![b' '; 4097]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read_until_end(&mut ws), Ending::Closed(Some(1009)));
}

/// An offered permessage-deflate is not accepted: the 101 has no Sec-WebSocket-Extensions.
#[test]
fn deflate_is_not_negotiated() {
    let gateway = Gateway::start(|_| {});
    let (_ws, response) = ws_open_with(
        gateway.addr,
        "/",
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    )
    .unwrap_or_else(|e| panic!("upgrade failed: {e}"));
    assert_eq!(response.status(), 101);
    assert!(response.headers().get("sec-websocket-extensions").is_none());
    assert_eq!(
        response
            .headers()
            .get("x-smithers-api-version")
            .and_then(|v| v.to_str().ok()),
        Some("v1")
    );
}

/// Reads raw bytes until the server's close frame and returns its code.
fn raw_close_code(stream: &mut TcpStream) -> Option<u16> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..64 {
        // Skip text frames (the challenge) until a close frame (opcode 8) heads the buffer.
        while bytes.len() >= 2 {
            let opcode = bytes[0] & 0x0F;
            let (head, length) = match bytes[1] & 0x7F {
                126 if bytes.len() >= 4 => (4, u16::from_be_bytes([bytes[2], bytes[3]]) as usize),
                126 => break,
                127 => panic!("no 64-bit lengths in this test"),
                short => (2, short as usize),
            };
            if bytes.len() < head + length {
                break;
            }
            if opcode == 8 {
                return (length >= 2).then(|| u16::from_be_bytes([bytes[head], bytes[head + 1]]));
            }
            bytes.drain(..head + length);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read: {e}"),
        }
    }
    None
}

fn raw_upgrade(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 4096, "no end of the 101 head");
        stream
            .read_exact(&mut byte)
            .unwrap_or_else(|e| panic!("{e}"));
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert!(String::from_utf8_lossy(&head)
        .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    stream
}

/// Protocol violations on the raw socket close with their codes: RSV1 without an extension and an
/// unmasked client frame are 1002; invalid UTF-8 in text is 1007.
#[test]
fn protocol_violations_close_with_their_codes() {
    let gateway = Gateway::start(|_| {});
    let cases: &[(&str, Vec<u8>, u16)] = &[
        ("rsv1 set", vec![0xC1, 0x80, 1, 2, 3, 4], 1002),
        ("unmasked", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("reserved opcode", vec![0x83, 0x80, 1, 2, 3, 4], 1002),
        ("bad utf-8", vec![0x81, 0x81, 0, 0, 0, 0, 0xFF], 1007),
        ("close with 1 byte", vec![0x88, 0x81, 0, 0, 0, 0, 3], 1002),
    ];
    for (name, frame, code) in cases {
        let mut stream = raw_upgrade(gateway.addr);
        stream.write_all(frame).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(raw_close_code(&mut stream), Some(*code), "{name}");
    }
}

/// A client close is echoed with its code.
#[test]
fn client_close_is_echoed() {
    let gateway = Gateway::start(|_| {});
    let (mut ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Library(4000),
        reason: "bye".into(),
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read_until_end(&mut ws), Ending::Closed(Some(4000)));
}

/// A peer that stops reading while requests keep coming fills its outbound queue: the queue is
/// dropped and the socket closes with 1013.
#[test]
fn outbound_bound_closes_with_1013() {
    let gateway = Gateway::start(|c| {
        c.message_bytes_max = 4096;
        c.outbound_bytes_max = 8192;
        c.socket_send_buffer_bytes = 4096;
    });
    // A tiny receive buffer on our side, so the kernel holds little on our behalf.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .unwrap_or_else(|e| panic!("{e}"));
    socket
        .set_recv_buffer_size(4096)
        .unwrap_or_else(|e| panic!("{e}"));
    socket
        .connect(&gateway.addr.into())
        .unwrap_or_else(|e| panic!("{e}"));
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut ws, _) = tungstenite::client::client(format!("ws://{}/", gateway.addr), stream)
        .unwrap_or_else(|e| panic!("upgrade failed: {e}"));
    let connected = request(&mut ws, "c", "connect", connect_params(Some(ADMIN_TOKEN)));
    assert_eq!(connected["ok"], true);
    // Each health response is ~300 bytes; 4,000 of them far exceed every buffer on the path.
    for index in 0..4000 {
        let text = json!({"type":"req","id":format!("h{index}"),"method":"health","params":{}})
            .to_string();
        if ws.write(tungstenite::Message::text(text)).is_err() {
            break;
        }
    }
    let _ = ws.flush();
    let mut responses = 0;
    let ending = loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(_)) => responses += 1,
            Ok(tungstenite::Message::Close(frame)) => {
                break Ending::Closed(frame.map(|f| u16::from(f.code)))
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break Ending::Dropped,
        }
    };
    assert_eq!(ending, Ending::Closed(Some(1013)));
    assert!(
        responses < 4000,
        "the queue was discarded, not delivered ({responses} responses)"
    );
    assert_eq!(
        gateway
            .state()
            .counters
            .outbound_overflow_closes
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// Shutdown closes open WebSockets with 1001.
#[test]
fn shutdown_closes_sockets_with_1001() {
    let mut gateway = Gateway::start(|_| {});
    let (mut ws, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
    let (mut idle, _) = ws_connect(gateway.addr, ADMIN_TOKEN);
    let reader = std::thread::spawn(move || read_until_end(&mut ws));
    gateway.stop();
    assert_eq!(
        reader.join().unwrap_or_else(|_| panic!("reader panicked")),
        Ending::Closed(Some(1001))
    );
    assert_eq!(read_until_end(&mut idle), Ending::Closed(Some(1001)));
    // Nothing listens any more.
    assert!(TcpStream::connect(gateway.addr).is_err());
}

/// Sends `count` `getRun` requests in one write (pipelined) and returns the ids answered, in
/// arrival order.
fn pipelined_get_runs(ws: &mut Ws, count: usize) -> Vec<String> {
    for index in 0..count {
        let request = json!({"type":"req","id":format!("r{index}"),"method":"getRun",
            "params":{"runId":format!("missing-{index}")}});
        ws.write(tungstenite::Message::text(request.to_string()))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    ws.flush().unwrap_or_else(|e| panic!("{e}"));
    let mut answered = Vec::new();
    while answered.len() < count {
        let frame = recv_json(ws);
        if frame["type"] == "res" {
            assert_eq!(frame["ok"], false, "{frame}");
            assert_eq!(frame["error"]["code"], "NOT_FOUND", "{frame}");
            answered.push(frame["id"].as_str().unwrap_or_default().to_string());
        }
    }
    answered
}

/// maxRequestsInFlight bounds the handlers one socket runs at once: past it the socket is not
/// read until one ends, and every request is still answered exactly once.
#[test]
fn in_flight_requests_are_bounded_per_socket() {
    let deferred = |gateway: &Gateway| {
        gateway
            .state()
            .counters
            .requests_deferred
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let bounded = Gateway::start(|c| c.requests_in_flight_max = 1);
    let (mut ws, _) = ws_connect(bounded.addr, ADMIN_TOKEN);
    let mut answered = pipelined_get_runs(&mut ws, 20);
    assert!(
        deferred(&bounded) >= 1,
        "20 pipelined requests under a bound of 1 must wait"
    );
    answered.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    expected.sort();
    assert_eq!(answered, expected, "each request answered once");
    // The same burst under the default bound (64) never waits.
    let open = Gateway::start(|_| {});
    let (mut ws, _) = ws_connect(open.addr, ADMIN_TOKEN);
    assert_eq!(pipelined_get_runs(&mut ws, 20).len(), 20);
    assert_eq!(deferred(&open), 0);
}
