//! Criterion benchmark of `parse_head` (head parsing plus the RFC 9112 checks) on the request
//! shapes the gateway sees: a health probe, a typical RPC POST, and a header-heavy request.
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use smithers_gateway::http::request::{parse_head, HeadLimits};

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost:7331\r\n\r\n";

const RPC: &[u8] = b"POST /v1/rpc/getRun HTTP/1.1\r\n\
Host: gateway.internal:7331\r\n\
User-Agent: smithers-cli/0.9.3\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate\r\n\
Content-Type: application/json\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJl\r\n\
Content-Length: 37\r\n\
Connection: keep-alive\r\n\
\r\n";

fn forty_headers() -> Vec<u8> {
    let mut s =
        String::from("GET /v1/runs?limit=50&cursor=abc HTTP/1.1\r\nHost: gateway.internal\r\n");
    for i in 1..40 {
        s.push_str(&format!(
            "X-Forwarded-Header-{i:02}: value-{i:02}-abcdefghijklmnopqrstuvwxyz\r\n"
        ));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn bench_parse_head(c: &mut Criterion) {
    let limits = HeadLimits::default();
    let forty = forty_headers();
    let cases: [(&str, &[u8]); 3] = [
        ("get_health", HEALTH),
        ("post_rpc_8_headers", RPC),
        ("get_40_headers", &forty),
    ];
    let mut group = c.benchmark_group("parse_head");
    for (name, input) in cases {
        // Fail loudly rather than benchmark the error path.
        assert!(
            matches!(parse_head(input, &limits), Ok(Some(_))),
            "{name} does not parse"
        );
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| b.iter(|| parse_head(black_box(input), &limits)));
    }
    group.finish();
}

criterion_group!(benches, bench_parse_head);
criterion_main!(benches);
