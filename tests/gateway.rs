//! One integration binary: every test starts a real gateway on 127.0.0.1 (ephemeral port) and
//! talks to it over real sockets. GATEWAY_DRIVER=legacy runs the same suite on epoll.

// Test server, clients, token minting.
#[path = "support/mod.rs"]
mod support;
// connect.challenge, connect validation, hello, ticks, repeated connect, pre-connect rules.
#[path = "handshake.rs"]
mod handshake;
// Auth end to end: JWT vectors, token/proxy/no-auth modes, gates, session cookie, limits, binary logs.
#[path = "auth.rs"]
mod auth;
