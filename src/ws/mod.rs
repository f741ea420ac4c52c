//! WebSocket (RFC 6455), server side: `frame` (header parse/format, masking), `codec` (message
//! assembly, control frames, UTF-8, close codes, limits) and `handshake` (upgrade validation).
//! No IO happens here; `runtime` feeds bytes in and writes bytes out.

pub mod codec;
pub mod frame;
pub mod handshake;
