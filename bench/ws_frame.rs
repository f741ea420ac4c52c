//! Criterion benchmark of the WebSocket hot path: decoding masked client text messages (16 B,
//! 1 KiB, 64 KiB; reported as throughput), parsing one frame header, and encoding server frames.
//!
//! It owns only measurements: it must never test protocol behaviour (the unit tests and fuzz
//! targets do; it only checks once that its own input decodes, so a broken codec cannot produce a
//! fast but meaningless number) and never touch the network or the file system.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use smithers_gateway::ws::codec::{encode_frame, Decoder, Message};
use smithers_gateway::ws::frame::{apply_mask, FrameHeader, OpCode};
use std::hint::black_box;

const MASK: [u8; 4] = [0x3A, 0x91, 0x07, 0xC4];
const SIZES: [usize; 3] = [16, 1024, 64 * 1024];

/// One masked client text frame (FIN set) carrying `len` bytes of ASCII text.
fn masked_text_frame(len: usize) -> Vec<u8> {
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode: OpCode::Text.as_u8(),
        mask: Some(MASK),
        payload_len: len as u64,
    };
    let mut head = [0u8; 14];
    let head_len = header.format(&mut head);
    let mut frame = head.get(..head_len).unwrap_or_default().to_vec();
    let payload: Vec<u8> = b"the quick brown fox jumps over the lazy dog "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect();
    let mut masked = payload;
    apply_mask(&mut masked, MASK, 0);
    frame.extend_from_slice(&masked);
    frame
}

fn decode_text(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("ws_decode_masked_text");
    for size in SIZES {
        let frame = masked_text_frame(size);
        let first = Decoder::new(1 << 20).decode(&frame);
        assert!(
            matches!(&first, Ok((consumed, Some(Message::Text(text)))) if *consumed == frame.len() && text.len() == size),
            "benchmark input does not decode: {first:?}"
        );
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(size),
            &frame,
            |bencher, frame| {
                let mut decoder = Decoder::new(1 << 20);
                bencher.iter(|| {
                    let (consumed, message) = decoder.decode(black_box(frame)).unwrap_or((0, None));
                    black_box((consumed, message))
                });
            },
        );
    }
    group.finish();
}

fn parse_header(criterion: &mut Criterion) {
    let frame = masked_text_frame(1024);
    criterion.bench_function("ws_header_parse", |bencher| {
        bencher.iter(|| black_box(FrameHeader::parse(black_box(&frame))))
    });
}

fn encode_server_frames(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("ws_encode_frame");
    for size in SIZES {
        let payload = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(size),
            &payload,
            |bencher, payload| {
                let mut out = Vec::with_capacity(size + 10);
                bencher.iter(|| {
                    out.clear();
                    encode_frame(&mut out, OpCode::Text, black_box(payload));
                    black_box(out.len())
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, decode_text, parse_header, encode_server_frames);
criterion_main!(benches);
