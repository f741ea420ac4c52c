//! HTTP/1.1 for the gateway: `request` (sans-IO head parsing with the semantic checks httparse
//! leaves to us, and body framing), `response` (status line and headers writer) and `router`
//! (the reference's route table and order). No IO happens here.

pub mod request;
pub mod response;
pub mod router;
