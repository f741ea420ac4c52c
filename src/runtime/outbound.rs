//! The outbound queue of one WebSocket: frames waiting for the socket, each held as up to three
//! slices so a broadcast body is never copied per recipient.
//!
//! A frame is `[head][body][tail]`: the head is the connection's own bytes (WebSocket header and
//! the per-connection JSON prefix with `seq` and `stateVersion`), the body is either the event's
//! shared immutable buffer (`Arc<[u8]>`, serialized once by the hub) or bytes owned by this frame
//! (a response), and the tail is a static suffix. The queue hands the unsent bytes of many frames
//! to one vectored write (`gather`) and moves past what the kernel took (`advance`), so a partial
//! write resumes mid-frame.
//!
//! Invariant: `bytes` equals the unsent bytes of the queued frames, and a frame that has started
//! to leave is never dropped (cutting it would corrupt the WebSocket stream).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::ws::frame::{server_head, OpCode};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

/// Head bytes kept inline in the frame (WebSocket header plus an event's JSON prefix fit).
const HEAD_INLINE: usize = 104;

/// The connection's own leading bytes of a frame.
enum Head {
    Inline { len: u8, bytes: [u8; HEAD_INLINE] },
    Heap(Box<[u8]>),
}

impl Head {
    fn from_parts(parts: [&[u8]; 2]) -> Head {
        let len = parts[0].len() + parts[1].len();
        if len <= HEAD_INLINE {
            let mut bytes = [0u8; HEAD_INLINE];
            let mut at = 0;
            for part in parts {
                if let Some(slot) = bytes.get_mut(at..at + part.len()) {
                    slot.copy_from_slice(part);
                }
                at += part.len();
            }
            Head::Inline {
                len: len as u8,
                bytes,
            }
        } else {
            Head::Heap([parts[0], parts[1]].concat().into_boxed_slice())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Head::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Head::Heap(bytes) => bytes,
        }
    }
}

/// The middle of a frame.
pub enum Body {
    /// A broadcast body or window frame shared by every recipient.
    Shared(Arc<[u8]>),
    /// Bytes only this frame uses (responses, connection-scoped events, echoes).
    Owned(Vec<u8>),
}

impl Body {
    fn as_slice(&self) -> &[u8] {
        match self {
            Body::Shared(bytes) => bytes,
            Body::Owned(bytes) => bytes,
        }
    }
}

/// One WebSocket frame waiting to be written.
pub struct OutFrame {
    head: Head,
    body: Body,
    tail: &'static [u8],
    /// The run/DevTools stream this frame counts toward (per-stream backpressure).
    pub tag: Option<u64>,
}

impl OutFrame {
    /// A data frame whose payload is `prefix + body + tail`; the WebSocket header is computed here.
    pub fn data(
        opcode: OpCode,
        prefix: &[u8],
        body: Body,
        tail: &'static [u8],
        tag: Option<u64>,
    ) -> OutFrame {
        let payload_len = prefix.len() + body.as_slice().len() + tail.len();
        let mut header = [0u8; 10];
        let header_len = server_head(opcode, payload_len, &mut header);
        OutFrame {
            head: Head::from_parts([header.get(..header_len).unwrap_or_default(), prefix]),
            body,
            tail,
            tag,
        }
    }

    /// A frame already encoded whole (control frames).
    pub fn encoded(bytes: Vec<u8>) -> OutFrame {
        OutFrame {
            head: Head::from_parts([&[], &[]]),
            body: Body::Owned(bytes),
            tail: &[],
            tag: None,
        }
    }

    pub fn len(&self) -> usize {
        self.head.as_slice().len() + self.body.as_slice().len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn parts(&self) -> [&[u8]; 3] {
        [self.head.as_slice(), self.body.as_slice(), self.tail]
    }

    /// The frame's bytes in one buffer.
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts().concat()
    }
}

/// The frames of one connection not yet accepted by the kernel.
#[derive(Default)]
pub struct OutQueue {
    frames: VecDeque<OutFrame>,
    /// Unsent bytes over all queued frames.
    bytes: usize,
    /// Bytes of the front frame already written.
    front_sent: usize,
}

impl OutQueue {
    pub fn push(&mut self, frame: OutFrame) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Unsent bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the front frame has partly left: a close frame must wait until it is complete.
    pub fn front_started(&self) -> bool {
        self.front_sent > 0
    }

    /// Appends the unsent bytes, front first, as at most `max_slices` slices.
    pub fn gather<'a>(&'a self, slices: &mut Vec<IoSlice<'a>>, max_slices: usize) {
        let mut skip = self.front_sent;
        for frame in &self.frames {
            for part in frame.parts() {
                if slices.len() >= max_slices {
                    return;
                }
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                let rest = part.get(skip..).unwrap_or_default();
                skip = 0;
                if !rest.is_empty() {
                    slices.push(IoSlice::new(rest));
                }
            }
        }
    }

    /// The kernel took `written` bytes from the front. Calls `done` with the tag of every frame
    /// that left completely.
    pub fn advance(&mut self, mut written: usize, mut done: impl FnMut(Option<u64>)) {
        debug_assert!(
            written <= self.bytes,
            "the kernel took more than was queued"
        );
        self.bytes = self.bytes.saturating_sub(written);
        while let Some(front) = self.frames.front() {
            let left = front.len() - self.front_sent;
            if written < left {
                self.front_sent += written;
                return;
            }
            written -= left;
            self.front_sent = 0;
            if let Some(frame) = self.frames.pop_front() {
                done(frame.tag);
            }
        }
        debug_assert_eq!(written, 0);
        self.release_if_empty();
    }

    /// An idle socket keeps no queue storage (a few frames' worth would be most of its memory).
    fn release_if_empty(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            self.frames = VecDeque::new();
        }
    }

    /// Drops every frame that has not started to leave and for which `drop` says so; returns how
    /// many were dropped. Their memory (and their share of any body) is released at once.
    pub fn drop_unstarted(&mut self, mut drop: impl FnMut(&OutFrame) -> bool) -> usize {
        let started = self.front_started();
        let before = self.frames.len();
        let mut index = 0;
        let mut freed = 0;
        self.frames.retain(|frame| {
            let keep = (index == 0 && started) || !drop(frame);
            index += 1;
            if !keep {
                freed += frame.len();
            }
            keep
        });
        self.bytes -= freed;
        self.release_if_empty();
        before - self.frames.len()
    }

    /// Drops everything, including a partly written frame (the connection is being dropped).
    pub fn clear(&mut self) {
        self.frames = VecDeque::new();
        self.bytes = 0;
        self.front_sent = 0;
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn frames() -> Vec<OutFrame> {
        let body: Arc<[u8]> = Arc::from(&b"\"event\":\"x\"}"[..]);
        vec![
            OutFrame::data(
                OpCode::Text,
                br#"{"seq":1,"#,
                Body::Shared(body.clone()),
                &[],
                Some(7),
            ),
            OutFrame::data(OpCode::Text, b"", Body::Owned(b"{}".to_vec()), &[], None),
            OutFrame::data(
                OpCode::Text,
                &[b'h'; 300],
                Body::Shared(body),
                b",\"t\":1}",
                Some(8),
            ),
        ]
    }

    fn joined(queue: &OutQueue) -> Vec<u8> {
        let mut slices = Vec::new();
        queue.gather(&mut slices, usize::MAX);
        slices.iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn frames_are_head_body_tail_with_a_correct_websocket_header() {
        let frames = frames();
        let first = frames[0].to_vec();
        assert_eq!(first[0], 0x81);
        assert_eq!(usize::from(first[1]), first.len() - 2);
        assert_eq!(&first[2..], br#"{"seq":1,"event":"x"}"#);
        let long = frames[2].to_vec();
        assert_eq!(long[1], 126, "a 16-bit length for a 300+ byte payload");
        assert!(long.ends_with(b"\"event\":\"x\"},\"t\":1}"));
        assert_eq!(frames[2].len(), long.len());
    }

    #[test]
    fn partial_writes_resume_mid_frame_and_report_each_frame_once() {
        let frames = frames();
        let whole: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        // Every split point, written in two pieces, gives back the same byte stream.
        for split in 0..=whole.len() {
            let mut queue = OutQueue::default();
            for frame in super::tests::frames() {
                queue.push(frame);
            }
            assert_eq!(queue.bytes(), whole.len());
            let mut sent = Vec::new();
            let mut tags = Vec::new();
            let first = joined(&queue);
            sent.extend_from_slice(&first[..split]);
            queue.advance(split, |tag| tags.push(tag));
            assert_eq!(queue.bytes(), whole.len() - split);
            sent.extend_from_slice(&joined(&queue));
            let rest = queue.bytes();
            queue.advance(rest, |tag| tags.push(tag));
            assert_eq!(sent, whole, "split at {split}");
            assert_eq!(tags, vec![Some(7), None, Some(8)]);
            assert!(queue.is_empty());
            assert_eq!(queue.bytes(), 0);
            assert_eq!(
                queue.frames.capacity(),
                0,
                "an empty queue holds no storage"
            );
        }
    }

    #[test]
    fn gather_respects_the_slice_limit() {
        let mut queue = OutQueue::default();
        for frame in frames() {
            queue.push(frame);
        }
        let mut slices = Vec::new();
        queue.gather(&mut slices, 3);
        assert_eq!(slices.len(), 3);
    }

    #[test]
    fn dropping_keeps_a_started_frame_and_releases_the_rest() {
        let mut queue = OutQueue::default();
        for frame in frames() {
            queue.push(frame);
        }
        queue.advance(3, |_| {});
        assert!(queue.front_started());
        let dropped = queue.drop_unstarted(|frame| frame.tag == Some(7) || frame.tag == Some(8));
        assert_eq!(dropped, 1, "the started front frame (tag 7) stays");
        assert_eq!(queue.len(), 2);
        let left = joined(&queue);
        assert_eq!(left.len(), queue.bytes());
        queue.clear();
        assert_eq!(queue.bytes(), 0);
        assert!(!queue.front_started());
    }
}
