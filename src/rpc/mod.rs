//! RPC frames, the connect handshake and method dispatch.
