//! WebSocket upgrade validation and the 101 response (RFC 6455 §4.2).
