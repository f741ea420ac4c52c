//! Run event streams (`streamRunEvents`, EVENTS.md §3, METHODS.md §3.17): ordered window frames
//! instead of raw events, replay from `afterSeq`, gap resync past a small window, heartbeats,
//! validation errors and the per-connection cap.

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn run_id_of(launched: &Value) -> String {
    launched["runId"].as_str().unwrap_or_default().to_string()
}

/// Opens a stream and returns the response payload; panics when it is refused.
fn open_stream(client: &mut Client, id: &str, params: Value) -> Value {
    let response = client.request(id, "streamRunEvents", params);
    assert_eq!(response["ok"], true, "streamRunEvents failed: {response}");
    response["payload"].clone()
}

fn error_code(response: &Value) -> &str {
    response["error"]["code"].as_str().unwrap_or_default()
}

/// The next `count` `run.event` frames of `stream_id`, skipping heartbeats; any other event for
/// `run_id` is a failure (the raw event must not reach a socket that streams the run).
fn stream_frames(client: &mut Client, stream_id: &str, run_id: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut frames = Vec::new();
    while frames.len() < count && Instant::now() < deadline {
        let event = client.next_event();
        match event["event"].as_str().unwrap_or_default() {
            "run.event" if event["payload"]["streamId"] == stream_id => frames.push(event),
            "run.heartbeat" | "tick" => {}
            _ => assert_ne!(
                event["payload"]["runId"], run_id,
                "raw event reached a streaming socket: {event}"
            ),
        }
    }
    assert_eq!(frames.len(), count, "frames: {frames:?}");
    frames
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["payload"]["seq"].as_u64().unwrap_or(0))
        .collect()
}

/// Launches `approve` and waits until it asks for the approval (its window stays non-terminal).
fn waiting_approve_run(client: &mut Client) -> String {
    let run_id = run_id_of(&client.launch("l1", json!({"workflow": "approve"})));
    client.wait_event(&run_id, "approval.requested");
    run_id
}

/// A `slow` run streamed from `afterSeq: 0` yields seq 1, 2, 3… without gaps or duplicates up to
/// `run.completed`, in the `run.event` shape, and no raw event for that run.
#[test]
fn stream_delivers_ordered_frames_instead_of_raw_events() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = run_id_of(&client.launch("l1", json!({"workflow": "slow"})));
    let opened = open_stream(&mut client, "s1", json!({"runId": run_id, "afterSeq": 0}));
    // Raw events from before the registration are not part of the stream.
    client.backlog.clear();
    let stream_id = opened["streamId"].as_str().unwrap_or_default().to_string();
    assert_eq!(opened["runId"], run_id.as_str());
    assert_eq!(opened["afterSeq"], 0);
    assert!(opened["currentSeq"].is_u64(), "{opened}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut frames = Vec::new();
    while Instant::now() < deadline {
        let frame = stream_frames(&mut client, &stream_id, &run_id, 1).remove(0);
        let done = frame["payload"]["event"] == "run.completed";
        frames.push(frame);
        if done {
            break;
        }
    }
    let expected: Vec<u64> = (1..=frames.len() as u64).collect();
    assert_eq!(seqs(&frames), expected);
    // Five tasks, each started and finished, then run.completed.
    assert_eq!(frames.len(), 11, "{frames:?}");
    let last = &frames[frames.len() - 1]["payload"];
    assert_eq!(last["apiVersion"], "v1");
    assert_eq!(last["type"], "RunEvent");
    assert_eq!(last["runId"], run_id.as_str());
    assert_eq!(
        last["payload"],
        json!({"runId": run_id, "status": "finished"})
    );
    assert!(last["stateVersion"].as_u64().unwrap_or(0) > 0, "{last}");
}

/// `afterSeq: 0` replays the whole window from seq 1; `afterSeq = currentSeq` replays nothing;
/// heartbeats carry the stream id; a later live frame reaches both streams.
#[test]
fn replay_from_zero_and_from_current_seq() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = waiting_approve_run(&mut client);
    let first = open_stream(&mut client, "s1", json!({"runId": run_id, "afterSeq": 0}));
    let current = first["currentSeq"].as_u64().unwrap_or(0);
    assert!(current >= 2, "{first}");
    let first_id = first["streamId"].as_str().unwrap_or_default().to_string();
    let replayed = stream_frames(&mut client, &first_id, &run_id, current as usize);
    let expected: Vec<u64> = (1..=current).collect();
    assert_eq!(seqs(&replayed), expected);

    let second = open_stream(
        &mut client,
        "s2",
        json!({"runId": run_id, "afterSeq": current}),
    );
    assert_eq!(second["currentSeq"], current);
    let second_id = second["streamId"].as_str().unwrap_or_default().to_string();
    assert_ne!(first_id, second_id);
    // Replay is queued right after the response, so a heartbeat for the second stream arrives
    // after any replayed frame would have.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no heartbeat for {second_id}");
        let event = client.next_event();
        assert!(
            !(event["event"] == "run.event" && event["payload"]["streamId"] == second_id),
            "afterSeq = currentSeq replayed {event}"
        );
        if event["event"] == "run.heartbeat" && event["payload"]["streamId"] == second_id {
            let payload = &event["payload"];
            assert_eq!(payload["apiVersion"], "v1");
            assert_eq!(payload["type"], "Heartbeat");
            assert_eq!(payload["runId"], run_id.as_str());
            assert!(payload["ts"].is_u64(), "{event}");
            break;
        }
    }

    // Approving produces live frames: both streams get the same next seq.
    let approvals = client.request("a", "listApprovals", json!({"runId": run_id}));
    let node_id = approvals["payload"][0]["nodeId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let decided = client.request(
        "d",
        "submitApproval",
        json!({"runId": run_id, "nodeId": node_id, "approved": true}),
    );
    assert_eq!(decided["ok"], true, "{decided}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut to_first, mut to_second) = (None, None);
    while (to_first.is_none() || to_second.is_none()) && Instant::now() < deadline {
        let event = client.next_event();
        if event["event"] != "run.event" {
            continue;
        }
        let seq = event["payload"]["seq"].as_u64();
        if event["payload"]["streamId"] == first_id && to_first.is_none() {
            to_first = seq;
        } else if event["payload"]["streamId"] == second_id && to_second.is_none() {
            to_second = seq;
        }
    }
    assert_eq!(to_first, Some(current + 1));
    assert_eq!(to_second, Some(current + 1));
}

/// With `eventWindowSize = 3`, `afterSeq: 0` on a longer window gets `run.gap_resync` for the
/// lost range (with the run record as snapshot), then the three frames still held.
#[test]
fn gap_resync_when_after_seq_is_older_than_the_window() {
    let workflows = temp_dir("stream-workflows");
    write_workflow(
        &workflows,
        "long",
        r#"
[[nodes]]
kind = "task"
id = "a"
output = { a = 1 }

[[nodes]]
kind = "task"
id = "b"
output = { b = 1 }

[[nodes]]
kind = "task"
id = "c"
output = { c = 1 }

[[nodes]]
kind = "approval"
id = "gate"
title = "Go?"
"#,
    );
    let config = smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        event_window_size: 3,
        ..Default::default()
    };
    let gateway = Gateway::start_full(config, 1, &workflows, &temp_dir("data"));
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = run_id_of(&client.launch("l1", json!({"workflow": "long"})));
    client.wait_event(&run_id, "approval.requested");
    let opened = open_stream(&mut client, "s1", json!({"runId": run_id, "afterSeq": 0}));
    let current = opened["currentSeq"].as_u64().unwrap_or(0);
    assert!(current >= 7, "{opened}");
    let stream_id = opened["streamId"].as_str().unwrap_or_default().to_string();
    let resync = client.next_event();
    assert_eq!(resync["event"], "run.gap_resync", "{resync}");
    let payload = &resync["payload"];
    assert_eq!(payload["apiVersion"], "v1");
    assert_eq!(payload["type"], "GapResync");
    assert_eq!(payload["streamId"], stream_id.as_str());
    assert_eq!(payload["fromSeq"], 1);
    assert_eq!(payload["toSeq"], current - 3);
    assert_eq!(payload["snapshot"]["runId"], run_id.as_str());
    assert_eq!(payload["snapshot"]["status"], "waiting-approval");
    let frames = stream_frames(&mut client, &stream_id, &run_id, 3);
    assert_eq!(seqs(&frames), vec![current - 2, current - 1, current]);
    let _ = std::fs::remove_dir_all(&workflows);
}

/// Validation order and codes of METHODS.md §3.17, and the cap of 8 streams per socket.
#[test]
fn stream_validation_and_connection_cap() {
    let gateway = Gateway::start(|_| {});
    let (mut client, _) = Client::connect(gateway.addr);
    let run_id = waiting_approve_run(&mut client);
    let cases = [
        (json!({}), "InvalidRunId"),
        (json!({"runId": ""}), "InvalidRunId"),
        (json!({"runId": 5}), "InvalidRunId"),
        (json!({"runId": run_id, "afterSeq": -1}), "SeqOutOfRange"),
        (json!({"runId": run_id, "afterSeq": 1.5}), "SeqOutOfRange"),
        (json!({"runId": run_id, "afterSeq": "1"}), "SeqOutOfRange"),
        (
            json!({"runId": "no-such-run", "afterSeq": -1}),
            "SeqOutOfRange",
        ),
        (json!({"runId": "no-such-run"}), "RunNotFound"),
        (
            json!({"runId": run_id, "afterSeq": 1_000_000}),
            "SeqOutOfRange",
        ),
    ];
    for (index, (params, code)) in cases.iter().enumerate() {
        let response = client.request(&format!("v{index}"), "streamRunEvents", params.clone());
        assert_eq!(response["ok"], false, "{params}: {response}");
        assert_eq!(error_code(&response), *code, "{params}: {response}");
    }
    let newer = client.request(
        "newer",
        "streamRunEvents",
        json!({"runId": run_id, "afterSeq": 1_000_000}),
    );
    assert!(
        newer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("afterSeq 1000000 is newer than current seq "),
        "{newer}"
    );
    for index in 0..8 {
        open_stream(&mut client, &format!("ok{index}"), json!({"runId": run_id}));
    }
    let refused = client.request("ninth", "streamRunEvents", json!({"runId": run_id}));
    assert_eq!(error_code(&refused), "RateLimited", "{refused}");
    assert_eq!(refused["error"]["scope"], "connection");
    assert_eq!(refused["error"]["limit"], 8);
    assert_eq!(
        refused["error"]["message"],
        "Gateway run-event subscriber limit reached (connection cap of 8)."
    );
    // Another socket still has room: the cap is per connection.
    let (mut other, _) = Client::connect(gateway.addr);
    open_stream(&mut other, "s", json!({"runId": run_id}));
}

/// EVENTS.md §3.5: a stream whose socket stops reading while its run emits thousands of frames is
/// torn down with `run.error` `BackpressureDisconnect`; the socket stays open and, with the stream
/// gone, gets the run's raw events again.
#[test]
fn slow_stream_consumer_gets_backpressure_disconnect() {
    let workflows = temp_dir("stream-noisy");
    write_workflow(
        &workflows,
        "noisy",
        r#"
[[nodes]]
kind = "task"
id = "noise"
run = ["sh", "-c", "sleep 0.2; seq 1 2500 >&2; echo '{\"ok\":true}'"]
"#,
    );
    let config = smithers_gateway::config::GatewayConfig {
        auth: Some(token_auth(&[(ADMIN_TOKEN, grant("admin", &["*"]))])),
        socket_send_buffer_bytes: 4096,
        ..Default::default()
    };
    let gateway = Gateway::start_full(config, 1, &workflows, &temp_dir("data"));
    // A tiny receive buffer on our side, so the kernel holds little on our behalf.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .unwrap_or_else(|e| panic!("{e}"));
    socket
        .set_recv_buffer_size(4096)
        .unwrap_or_else(|e| panic!("{e}"));
    socket
        .connect(&gateway.addr.into())
        .unwrap_or_else(|e| panic!("{e}"));
    let stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut ws, _) = tungstenite::client::client(gateway.ws_url(), stream)
        .unwrap_or_else(|e| panic!("upgrade failed: {e}"));
    let connected = request(&mut ws, "c", "connect", connect_params(Some(ADMIN_TOKEN)));
    assert_eq!(connected["ok"], true, "{connected}");
    let mut slow = Client {
        ws,
        backlog: Default::default(),
    };
    let run_id = run_id_of(&slow.launch("l1", json!({"workflow": "noisy"})));
    let opened = open_stream(&mut slow, "s1", json!({"runId": run_id}));
    let stream_id = opened["streamId"].as_str().unwrap_or_default().to_string();

    // Stop reading until the run has finished (every frame has been published).
    let (mut control, _) = Client::connect(gateway.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = control.request("g", "getRun", json!({"runId": run_id}));
        if run["payload"]["status"] == "finished" {
            break;
        }
        assert!(Instant::now() < deadline, "run did not finish: {run}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut error = None;
    let mut after_error = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no raw run.completed after the stream ended"
        );
        let event = slow.next_event();
        let payload = &event["payload"];
        match event["event"].as_str().unwrap_or_default() {
            "run.error" => {
                assert!(error.is_none(), "second run.error: {event}");
                error = Some(payload.clone());
            }
            "run.event" if error.is_some() && payload["streamId"] == stream_id => after_error += 1,
            "run.completed" if payload["runId"] == run_id => break,
            _ => {}
        }
    }
    assert_eq!(
        error,
        Some(json!({
            "streamId": stream_id,
            "runId": run_id,
            "error": {
                "version": "v1",
                "code": "BackpressureDisconnect",
                "message": "Run event stream outbound queue exceeded 1000 frames; disconnecting slow consumer."
            }
        }))
    );
    assert_eq!(after_error, 0, "frames after the stream was torn down");
    // The socket stays open and the stream's cap slot is released.
    let health = slow.request("h", "health", json!({}));
    assert_eq!(health["ok"], true, "{health}");
    open_stream(&mut slow, "s2", json!({"runId": run_id}));
    let _ = std::fs::remove_dir_all(&workflows);
}

/// The subscriber caps of METHODS.md §3.17 step 7 beyond the socket: 32 per identity, 64 per run
/// and 256 in all, each refused with `RateLimited` naming its scope; a closed socket frees its
/// streams' places.
#[test]
fn stream_caps_per_identity_run_and_total() {
    let users: Vec<(String, smithers_gateway::config::TokenGrant)> = (0..9)
        .map(|index| {
            let mut grant = grant("admin", &["*"]);
            grant.user_id = Some(format!("user-{index}"));
            (format!("token-of-user-{index}"), grant)
        })
        .collect();
    let mut tokens: Vec<(&str, smithers_gateway::config::TokenGrant)> = users
        .iter()
        .map(|(token, grant)| (token.as_str(), grant.clone()))
        .collect();
    tokens.push((ADMIN_TOKEN, grant("admin", &["*"])));
    let gateway = Gateway::start(|c| c.auth = Some(token_auth(&tokens)));
    let (mut admin, _) = Client::connect(gateway.addr);
    let runs: Vec<String> = (0..5).map(|_| waiting_approve_run(&mut admin)).collect();
    // Eight streams on `run` from a new socket of user `user`.
    let fill = |user: usize, run: &str| -> Client {
        let (mut client, _) = Client::connect_as(gateway.addr, &users[user].0);
        for index in 0..8 {
            open_stream(&mut client, &format!("s{index}"), json!({"runId": run}));
        }
        client
    };
    let refusal = |user: usize, run: &str| -> (Client, Value) {
        let (mut client, _) = Client::connect_as(gateway.addr, &users[user].0);
        let response = client.request("over", "streamRunEvents", json!({"runId": run}));
        assert_eq!(error_code(&response), "RateLimited", "{response}");
        (client, response["error"].clone())
    };
    let mut held = Vec::new();
    // 32 streams of user-0 on run 0: the 33rd is refused for the identity.
    held.extend((0..4).map(|_| fill(0, &runs[0])));
    let (_, error) = refusal(0, &runs[1]);
    assert_eq!(
        (error["scope"].clone(), error["limit"].clone()),
        (json!("user"), json!(32))
    );
    assert_eq!(
        error["message"],
        "Gateway run-event subscriber limit reached (user cap of 32)."
    );
    // 32 more from user-1 on run 0: 64 on that run, and the next one is refused for the run.
    held.extend((0..4).map(|_| fill(1, &runs[0])));
    let (_, error) = refusal(2, &runs[0]);
    assert_eq!(
        (error["scope"].clone(), error["limit"].clone()),
        (json!("run"), json!(64))
    );
    // Users 2–7 fill runs 1–3 (64 each): 256 in all, and the next one is refused for the total.
    for user in 2..8 {
        let run = &runs[1 + (user - 2) / 2];
        held.extend((0..4).map(|_| fill(user, run)));
    }
    let (mut late, error) = refusal(8, &runs[4]);
    assert_eq!(
        (error["scope"].clone(), error["limit"].clone()),
        (json!("global"), json!(256))
    );
    // A socket that closes gives its places back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = late.request("retry", "streamRunEvents", json!({"runId": runs[4]}));
        if response["ok"] == true {
            break;
        }
        assert_eq!(response["error"]["scope"], "global", "{response}");
        assert!(
            Instant::now() < deadline,
            "the closed socket's streams were never released"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
