//! Criterion benchmark of the event path: serializing an event body once (our writer over the
//! simd-json value, against serde_json), building one recipient's frame around the shared body
//! (the per-delivery cost), gathering a corked queue for one vectored write, and parsing a
//! request frame (simd-json against serde_json).
//!
//! It owns only measurements and checks once that each input gives the expected bytes, so a
//! broken encoder cannot produce a fast but meaningless number. No network, no file system.
use criterion::{criterion_group, criterion_main, Criterion};
use smithers_gateway::rpc::frame::{
    encode_event_body, encode_event_head, event_head, object, parse_ws_request, EVENT_HEAD_MAX,
};
use smithers_gateway::rpc::Value;
use smithers_gateway::runtime::outbound::{Body, OutFrame, OutQueue};
use smithers_gateway::ws::frame::OpCode;
use std::hint::black_box;
use std::io::IoSlice;
use std::sync::Arc;

/// A `task.output` payload of about the size PERFORMANCE.md uses (a ~370-byte frame).
fn payload_value() -> Value {
    object(vec![
        (
            "runId",
            Value::from("run-4f6c1a9e-2d7b-4c55-9a0e-6b1f3c2d8e71"),
        ),
        ("nodeId", Value::from("build")),
        (
            "output",
            Value::from("compiling smithers-gateway v0.1.0 (/work/main) ".repeat(4)),
        ),
        ("stream", Value::from("stderr")),
    ])
}

fn payload_serde() -> serde_json::Value {
    serde_json::json!({
        "runId": "run-4f6c1a9e-2d7b-4c55-9a0e-6b1f3c2d8e71",
        "nodeId": "build",
        "output": "compiling smithers-gateway v0.1.0 (/work/main) ".repeat(4),
        "stream": "stderr",
    })
}

fn serialize(criterion: &mut Criterion) {
    let value = payload_value();
    let serde_value = payload_serde();
    let ours = encode_event_body("task.output", &value);
    let mut theirs = br#""event":"task.output","payload":"#.to_vec();
    theirs.extend(serde_json::to_vec(&serde_value).unwrap_or_default());
    theirs.extend_from_slice(br#","apiVersion":"v1"}"#);
    // serde_json orders keys; compare the parsed documents and the sizes.
    let as_json = |body: &[u8]| {
        let mut text = b"{".to_vec();
        text.extend_from_slice(body);
        serde_json::from_slice::<serde_json::Value>(&text).ok()
    };
    assert!(as_json(&ours).is_some() && as_json(&ours) == as_json(&theirs));
    assert_eq!(ours.len(), theirs.len());
    let mut group = criterion.benchmark_group("event_body_serialize");
    group.bench_function("simd_json_value_writer", |b| {
        b.iter(|| encode_event_body(black_box("task.output"), black_box(&value)))
    });
    group.bench_function("serde_json_to_vec", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(br#""event":"task.output","payload":"#);
            serde_json::to_writer(&mut out, black_box(&serde_value)).unwrap_or_default();
            out.extend_from_slice(br#","apiVersion":"v1"}"#);
            out
        })
    });
    group.finish();
}

fn recipient_frame(criterion: &mut Criterion) {
    let body: Arc<[u8]> = encode_event_body("task.output", &payload_value()).into();
    let frame_len = {
        let mut prefix = Vec::new();
        encode_event_head(&mut prefix, 1_234, 98_765);
        OutFrame::data(OpCode::Text, &prefix, Body::Shared(body.clone()), &[], None).len()
    };
    assert!(frame_len > body.len() + 40, "head plus shared body");
    let mut group = criterion.benchmark_group("event_recipient");
    group.bench_function("head_and_shared_body", |b| {
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            let mut prefix = Vec::with_capacity(64);
            encode_event_head(&mut prefix, seq, black_box(98_765));
            OutFrame::data(OpCode::Text, &prefix, Body::Shared(body.clone()), &[], None)
        })
    });
    group.bench_function("copy_into_own_frame", |b| {
        // The previous design: the shared body copied into each recipient's frame.
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            let mut bytes = Vec::with_capacity(64 + body.len());
            encode_event_head(&mut bytes, seq, black_box(98_765));
            bytes.extend_from_slice(&body);
            OutFrame::data(OpCode::Text, &[], Body::Owned(bytes), &[], None)
        })
    });
    group.finish();
}

fn corked_gather(criterion: &mut Criterion) {
    let body: Arc<[u8]> = encode_event_body("task.output", &payload_value()).into();
    let mut group = criterion.benchmark_group("corked_queue_32_events");
    group.bench_function("queue_gather_advance", |b| {
        b.iter(|| {
            let mut queue = OutQueue::default();
            for seq in 0..32u64 {
                let mut head = [0u8; EVENT_HEAD_MAX];
                let len = event_head(seq, seq, &mut head);
                queue.push(OutFrame::data(
                    OpCode::Text,
                    &head[..len],
                    Body::Shared(body.clone()),
                    &[],
                    None,
                ));
            }
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(64);
            queue.gather(&mut slices, 512);
            let total: usize = slices.iter().map(|s| s.len()).sum();
            drop(slices);
            queue.advance(total, |_| {});
            black_box(total)
        })
    });
    group.finish();
}

fn parse_request(criterion: &mut Criterion) {
    let request = br#"{"type":"req","id":"r-000123","method":"getRun","params":{"runId":"run-4f6c1a9e-2d7b"}}"#;
    let parsed = parse_ws_request(request.to_vec(), 1 << 20);
    assert!(parsed.is_ok_and(|r| r.method == "getRun"));
    let mut group = criterion.benchmark_group("request_parse");
    group.bench_function("simd_json_with_checks", |b| {
        b.iter(|| parse_ws_request(black_box(request.to_vec()), 1 << 20))
    });
    group.bench_function("serde_json_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(request)))
    });
    let event = serde_json::to_vec(
        &serde_json::json!({"type":"event","seq":12,"stateVersion":40,
        "event":"task.output","payload":payload_serde(),"apiVersion":"v1"}),
    )
    .unwrap_or_default();
    group.bench_function("serde_json_event_330b", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&event)))
    });
    group.bench_function("simd_json_event_330b", |b| {
        b.iter(|| {
            let mut copy = event.clone();
            simd_json::to_owned_value(black_box(&mut copy)).is_ok()
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    serialize,
    recipient_frame,
    corked_gather,
    parse_request
);
criterion_main!(benches);
