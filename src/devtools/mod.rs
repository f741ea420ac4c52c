//! DevTools (EVENTS.md §4, METHODS.md §3.18–3.21): snapshots of a run's frames, deltas between
//! them, and the hub that serves `streamDevTools` subscribers from one shared cache.
//!
//! - `json`: JSON-safe values with sorted keys, and the props parsing rules.
//! - `snapshot`: a frame (element tree, task index, attempts) into a snapshot and its bytes.
//! - `delta`: snapshot A → B as ordered ops, their bytes, and the client's application rule.
//! - `hub`: the stream algorithm of §4.5 as a state machine over a per-(run, frame) cache, fed by
//!   the engine's committed frames; each snapshot and delta is built and serialized once per run.
//! - `node`: `getNodeOutput` and `getNodeDiff` payloads from stored rows, with their size caps.
//!
//! Everything here is pure except `hub::Work::perform`, which reads a frame through the storage
//! handle; sockets belong to `runtime::ws_session`.

pub mod delta;
pub mod hub;
pub mod json;
pub mod node;
pub mod snapshot;
