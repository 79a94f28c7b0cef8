//! Compression of the agent link: what the mux and an agent send each other crosses the
//! network deflated, where that pays, without ssh's own `-C` (docs/protocol.md, "Compression
//! on the agent link").
//!
//! The link carries two kinds of unit, told apart by their first byte:
//!
//! ```text
//! frame     u32 BE header_len (its first byte is 0x00, or 0x01 for a 16 MiB header), ...
//! segment   u16 BE 0x8000 | len (len 1 ..= SEGMENT_MAX), then len bytes of raw deflate data
//! patch     u8 0x02, u16 BE start, u16 BE removed, u8 len, then len bytes
//! ```
//!
//! A patch is the frame before it in the same direction, its encoding's bytes `start ..
//! start + removed` replaced by the patch's `len` bytes: the next loop item's call, which
//! differs from the last one in its id, costs 7 bytes where a segment costs 20 (deflate covers
//! at most 258 repeated bytes per code, and a call is a kilobyte). The frame patched is the
//! last one sent whatever way it went, if its encoding is at most [`PATCH_BASE_MAX`] bytes
//! (none otherwise). Only the mux sends patches; the agent reads them (link.py).
//!
//! Segments continue one deflate stream per direction, kept for the link's lifetime, so a
//! frame much like an earlier one (the next loop item's call, its reply) costs a few bytes.
//! Each frame sent compressed is the ordinary encoding of a frame, deflated and flushed
//! (`Z_PARTIAL_FLUSH`, as ssh's own compression does) before anything else is sent, so a frame
//! never straddles a raw one. A frame whose body does not shrink goes as it is, byte for byte
//! what [`FrameCodec`] writes: [`worth_compressing`] deflates a few samples of it, which
//! costs about 1% of compressing it all.
//!
//! Decompression is bounded: inflated bytes go through a [`FrameCodec`], whose length checks
//! refuse a frame over the limits as soon as its prefix is inflated, and one segment inflates to
//! at most [`INFLATE_RATIO_MAX`] times its size (deflate's own bound), so the buffer never holds
//! more than the frame being assembled and one segment's output.

use std::cell::RefCell;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio_util::codec::{Decoder, Encoder};

use crate::{Frame, FrameCodec, FrameError};

/// Largest deflate payload of one segment (the 15 bits of its length).
pub const SEGMENT_MAX: usize = 0x7fff;

/// The bit of a unit's first byte that marks a segment (a frame's first byte is 0x00 or 0x01).
const SEGMENT_FLAG: u16 = 0x8000;

/// Bodies smaller than this are always compressed: their frame is mostly header, and headers
/// repeat from frame to frame.
pub const PROBE_MIN_BODY: usize = 4096;

/// Size of each of the three samples (start, middle, end of the body) that decide whether a
/// larger body is compressed.
pub const PROBE_SAMPLE: usize = 4096;

/// A body is compressed when its samples, deflated, come to less than this many per cent of
/// their size.
pub const PROBE_PERCENT: usize = 90;

/// The deflate level of the mux's stream, low to keep pace with the network for bulk data; the
/// long repeats of one frame in the next are found about as well as at the higher levels. Not
/// 1: zlib-rs's level 1 codes with fixed Huffman tables only, which leaves base64 text (module
/// zips) unshrunk. The agent's CPython zlib uses 1, which has dynamic tables; the receiving side
/// does not depend on either.
pub const MUX_LEVEL: u32 = 2;

/// The first byte of a patch.
pub const PATCH_TAG: u8 = 0x02;

/// Largest encoding of a frame that a patch may start from: a call is about a kilobyte.
pub const PATCH_BASE_MAX: usize = 16 * 1024;

/// Most bytes a patch replaces a frame's with: past a few, a segment is as small.
pub const PATCH_INSERT_MAX: usize = 8;

/// Most bytes deflate data can inflate to per byte (RFC 1951's longest match per code).
pub const INFLATE_RATIO_MAX: usize = 1032;

/// Inflated bytes are produced into the frame buffer this many at a time.
const INFLATE_STEP: usize = 64 * 1024;

thread_local! {
    /// The scratch compressor the probe resets for each sample: one per thread rather than one
    /// per link, as a compressor's state is about a quarter of a megabyte and a mux holds a
    /// link per target.
    static PROBE: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(MUX_LEVEL), false));
}

/// Whether a frame with this body is worth sending compressed: always for a small body, and for
/// a larger one when [`MUX_LEVEL`] shrinks three samples of it (start, middle, end) below
/// [`PROBE_PERCENT`].
pub fn worth_compressing(body: &[u8]) -> bool {
    if body.len() < PROBE_MIN_BODY {
        return true;
    }
    PROBE.with(|probe| samples_shrink(body, &mut probe.borrow_mut()))
}

fn samples_shrink(body: &[u8], probe: &mut Compress) -> bool {
    let middle = body.len() / 2 - PROBE_SAMPLE.min(body.len()) / 2;
    let samples = [0, middle, body.len().saturating_sub(PROBE_SAMPLE)];
    let mut input = 0;
    let mut output = 0;
    let mut scratch = vec![0u8; 2 * PROBE_SAMPLE];
    for start in samples {
        let sample = &body[start..(start + PROBE_SAMPLE).min(body.len())];
        probe.reset();
        let before = probe.total_out();
        match probe.compress(sample, &mut scratch, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => output += (probe.total_out() - before) as usize,
            _ => return false,
        }
        input += sample.len();
    }
    output * 100 < input * PROBE_PERCENT
}

/// Codec for the agent link: decodes frames and segments alike, and encodes frames compressed
/// where [`worth_compressing`] says so (or never, for [`AgentLinkCodec::plain`]).
pub struct AgentLinkCodec {
    /// Frames that cross the link as they are.
    raw: FrameCodec,
    /// Frames inside the inflated stream.
    inner: FrameCodec,
    inflater: Decompress,
    inflated: BytesMut,
    /// This side's stream; `None` when it sends plain frames only.
    deflater: Option<Compress>,
    /// The encoding of the last frame sent, which the next may be a patch of (compressing
    /// codecs only; `None` after a frame over [`PATCH_BASE_MAX`]).
    last_sent: Option<Bytes>,
}

impl std::fmt::Debug for AgentLinkCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentLinkCodec")
            .field("inflated", &self.inflated.len())
            .field("compressing", &self.deflater.is_some())
            .finish()
    }
}

impl AgentLinkCodec {
    /// A codec that compresses what it sends where that pays.
    pub fn compressing() -> AgentLinkCodec {
        AgentLinkCodec {
            deflater: Some(Compress::new(Compression::new(MUX_LEVEL), false)),
            ..AgentLinkCodec::plain()
        }
    }

    /// A codec that sends frames as they are (and still reads segments).
    pub fn plain() -> AgentLinkCodec {
        AgentLinkCodec {
            raw: FrameCodec::new(),
            inner: FrameCodec::new(),
            inflater: Decompress::new(false),
            inflated: BytesMut::new(),
            deflater: None,
            last_sent: None,
        }
    }

    /// Appends `plain` (an encoded frame) to `dst` as a patch of the last frame sent, if it
    /// differs from that in one run of at most [`PATCH_INSERT_MAX`] bytes; says whether it did.
    fn patch_into(last: &[u8], plain: &[u8], dst: &mut BytesMut) -> bool {
        let common =
            |a: &mut dyn Iterator<Item = (&u8, &u8)>| a.take_while(|(x, y)| x == y).count();
        let start = common(&mut last.iter().zip(plain));
        let shorter = last.len().min(plain.len()) - start;
        let end = common(&mut last.iter().rev().zip(plain.iter().rev())).min(shorter);
        let removed = last.len() - start - end;
        let inserted = &plain[start..plain.len() - end];
        if inserted.len() > PATCH_INSERT_MAX
            || start > usize::from(u16::MAX)
            || removed > usize::from(u16::MAX)
        {
            return false;
        }
        dst.put_u8(PATCH_TAG);
        dst.put_u16(start as u16);
        dst.put_u16(removed as u16);
        dst.put_u8(inserted.len() as u8);
        dst.put_slice(inserted);
        true
    }

    /// Inflates one segment's deflate data onto the frame buffer.
    fn inflate(&mut self, mut input: &[u8]) -> Result<(), FrameError> {
        while !input.is_empty() {
            let start = self.inflated.len();
            self.inflated.resize(start + INFLATE_STEP, 0);
            let (in_before, out_before) = (self.inflater.total_in(), self.inflater.total_out());
            let status =
                self.inflater
                    .decompress(input, &mut self.inflated[start..], FlushDecompress::Sync);
            let consumed = (self.inflater.total_in() - in_before) as usize;
            let produced = (self.inflater.total_out() - out_before) as usize;
            self.inflated.truncate(start + produced);
            input = &input[consumed..];
            match status {
                Ok(Status::Ok) | Ok(Status::BufError) if consumed > 0 || produced > 0 => {}
                Ok(Status::StreamEnd) => return Err(bad_segment("the deflate stream ended")),
                Ok(_) => return Err(bad_segment("the deflate data does not progress")),
                Err(err) => return Err(bad_segment(&err.to_string())),
            }
        }
        Ok(())
    }

    /// Appends `plain` (encoded frames) to `dst` as deflated segments, flushed.
    fn deflate_into(stream: &mut Compress, mut plain: &[u8], dst: &mut BytesMut) {
        loop {
            let tag = dst.len();
            dst.put_u16(0);
            dst.resize(tag + 2 + SEGMENT_MAX, 0);
            let (in_before, out_before) = (stream.total_in(), stream.total_out());
            // Compressing into memory only fails on a corrupted stream state.
            let _ = stream.compress(plain, &mut dst[tag + 2..], FlushCompress::Partial);
            let consumed = (stream.total_in() - in_before) as usize;
            let produced = (stream.total_out() - out_before) as usize;
            plain = &plain[consumed..];
            dst.truncate(tag + 2 + produced);
            if produced == 0 {
                dst.truncate(tag);
            } else {
                dst[tag..tag + 2].copy_from_slice(&(SEGMENT_FLAG | produced as u16).to_be_bytes());
            }
            // A full segment may leave output behind in the stream; anything less is the flush.
            if plain.is_empty() && produced < SEGMENT_MAX {
                return;
            }
        }
    }
}

fn bad_segment(why: &str) -> FrameError {
    FrameError::BadSegment(why.to_owned())
}

impl Decoder for AgentLinkCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = self.inner.decode(&mut self.inflated)? {
                return Ok(Some(frame));
            }
            if self.raw.in_frame() {
                return self.raw.decode(src);
            }
            let Some(&first) = src.first() else {
                return Ok(None);
            };
            if first == PATCH_TAG {
                return Err(bad_segment("a patch, which only the mux sends"));
            }
            if first & 0x80 == 0 {
                if !self.inflated.is_empty() || self.inner.in_frame() {
                    return Err(bad_segment("a plain frame inside a compressed one"));
                }
                return self.raw.decode(src);
            }
            if src.len() < 2 {
                return Ok(None);
            }
            let len = usize::from(u16::from_be_bytes([src[0], src[1]]) & !SEGMENT_FLAG);
            if len == 0 {
                return Err(bad_segment("empty segment"));
            }
            if src.len() < 2 + len {
                src.reserve(2 + len - src.len());
                return Ok(None);
            }
            src.advance(2);
            let segment = src.split_to(len);
            self.inflate(&segment)?;
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && !self.raw.in_frame() => {
                self.inner.decode_eof(&mut self.inflated)
            }
            None => Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a frame",
            ))),
        }
    }
}

impl Encoder<&Frame> for AgentLinkCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        if let Some(stream) = &mut self.deflater {
            if worth_compressing(&frame.body) {
                let plain: Bytes = frame.to_bytes()?;
                let patched = self
                    .last_sent
                    .as_ref()
                    .is_some_and(|last| AgentLinkCodec::patch_into(last, &plain, dst));
                if !patched {
                    AgentLinkCodec::deflate_into(stream, &plain, dst);
                }
                self.last_sent = (plain.len() <= PATCH_BASE_MAX).then_some(plain);
                return Ok(());
            }
            self.last_sent = None;
        }
        frame.encode_into(dst)
    }
}

impl Encoder<Frame> for AgentLinkCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&frame, dst)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Bytes that no compressor shrinks (xorshift; no rand dependency).
    fn random_bytes(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn text(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut line = 0u64;
        while out.len() < len {
            out.extend_from_slice(
                format!(
                    "{line:08} the quick brown fox jumps over the lazy dog {}\n",
                    line * 7919
                )
                .as_bytes(),
            );
            line += 1;
        }
        out.truncate(len);
        out
    }

    fn chunk(body: Vec<u8>) -> Frame {
        Frame::new("chunk")
            .with("id", 3)
            .with("offset", 0)
            .with_body(body)
    }

    fn wire(codec: &mut AgentLinkCodec, frames: &[Frame]) -> BytesMut {
        let mut dst = BytesMut::new();
        for frame in frames {
            codec.encode(frame, &mut dst).unwrap();
        }
        dst
    }

    fn decode_all(mut src: BytesMut) -> Result<Vec<Frame>, FrameError> {
        let mut codec = AgentLinkCodec::plain();
        let mut out = Vec::new();
        while let Some(frame) = codec.decode_eof(&mut src)? {
            out.push(frame);
        }
        Ok(out)
    }

    #[test]
    fn random_chunk_goes_as_it_is_and_text_compressed() {
        let random = chunk(random_bytes(1 << 20));
        let mut codec = AgentLinkCodec::compressing();
        assert_eq!(
            wire(&mut codec, std::slice::from_ref(&random)),
            random.to_bytes().unwrap()
        );

        let text = chunk(text(1 << 20));
        let sent = wire(&mut codec, std::slice::from_ref(&text));
        assert!(sent[0] & 0x80 != 0);
        assert!(sent.len() < (1 << 20) / 3, "{}", sent.len());
        assert_eq!(decode_all(sent).unwrap(), vec![text]);
    }

    #[test]
    fn plain_codec_writes_what_frame_codec_writes() {
        let frame = Frame::new("call").with("id", 1).with_body(&b"x"[..]);
        let sent = wire(&mut AgentLinkCodec::plain(), std::slice::from_ref(&frame));
        assert_eq!(sent, frame.to_bytes().unwrap());
    }

    #[test]
    fn mixed_stream_round_trips_in_order_byte_by_byte() {
        let frames = vec![
            Frame::new("call")
                .with("id", 1)
                .with("args", json!({"cmd": "hostname"})),
            chunk(random_bytes(300_000)),
            chunk(text(200_000)),
            Frame::new("call")
                .with("id", 2)
                .with("args", json!({"cmd": "hostname"})),
            chunk(random_bytes(5000)),
            Frame::new("ack").with("id", 3).with("bytes", 5),
        ];
        let sent = wire(&mut AgentLinkCodec::compressing(), &frames);
        let mut codec = AgentLinkCodec::plain();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in sent.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, frames);
    }

    #[test]
    fn a_repeated_frame_costs_a_few_bytes() {
        let call = |id: u64| {
            Frame::new("call").with("id", id).with(
                "args",
                json!({"module_fqn": "ansible.builtin.command", "params": "{\"_raw_params\": \"hostname\"}"}),
            )
        };
        let mut codec = AgentLinkCodec::compressing();
        let first = wire(&mut codec, &[call(1)]).len();
        let second = wire(&mut codec, &[call(2)]).len();
        assert!(second < 16 && second < first / 4, "{first} then {second}");
    }

    #[test]
    fn a_call_like_the_last_but_its_id_goes_as_a_patch() {
        let call = |id: u64| {
            Frame::new("call").with("id", id).with(
                "args",
                json!({"params": "x".repeat(1000), "module_fqn": "ansible.builtin.command"}),
            )
        };
        let mut codec = AgentLinkCodec::compressing();
        assert!(wire(&mut codec, &[call(10)])[0] & 0x80 != 0);
        let patch = wire(&mut codec, &[call(11)]);
        let plain = call(10).to_bytes().unwrap();
        let start = plain
            .iter()
            .zip(call(11).to_bytes().unwrap().iter())
            .take_while(|(a, b)| a == b)
            .count();
        let [high, low] = (start as u16).to_be_bytes();
        assert_eq!(&patch[..], &[PATCH_TAG, high, low, 0, 1, 1, b'1'][..]);
        let text = chunk(text(2 * PROBE_MIN_BODY));
        assert!(wire(&mut codec, &[text])[0] & 0x80 != 0);
        // After a frame too different, a segment again; after a random chunk, no patch either.
        assert!(wire(&mut codec, &[call(12)])[0] & 0x80 != 0);
        assert_eq!(wire(&mut codec, &[call(13)])[0], PATCH_TAG);
        wire(&mut codec, &[chunk(random_bytes(1 << 16))]);
        assert!(wire(&mut codec, &[call(14)])[0] & 0x80 != 0);
        let plain_wire = wire(&mut AgentLinkCodec::plain(), &[call(1), call(2)]);
        let both = [call(1).to_bytes().unwrap(), call(2).to_bytes().unwrap()].concat();
        assert_eq!(plain_wire, both, "a plain codec sends no patches");
        let err = decode_all(patch).unwrap_err();
        assert!(err.to_string().contains("only the mux sends"), "{err}");
    }

    #[test]
    fn inflated_frame_over_the_limit_is_refused() {
        // A segment of zeros inflates to a prefix announcing a 0-byte header: refused as soon
        // as it is inflated, before anything more is buffered.
        let mut stream = Compress::new(Compression::new(1), false);
        let mut dst = BytesMut::new();
        AgentLinkCodec::deflate_into(&mut stream, &vec![0u8; 1 << 20], &mut dst);
        assert!(dst.len() < 1 << 14, "{}", dst.len());
        let err = decode_all(dst).unwrap_err();
        assert_eq!(err.to_string(), "frame header length is 0");

        let mut huge = BytesMut::new();
        huge.put_u32(2);
        huge.put_u32(u32::MAX);
        let mut dst = BytesMut::new();
        let mut stream = Compress::new(Compression::new(1), false);
        AgentLinkCodec::deflate_into(&mut stream, &huge, &mut dst);
        let err = decode_all(dst).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn garbage_segment_and_plain_frame_inside_compressed_one_are_errors() {
        let err = decode_all(BytesMut::from(&[0x80, 0x02, 0xff, 0xff][..])).unwrap_err();
        assert!(
            err.to_string().starts_with("bad compressed segment"),
            "{err}"
        );

        let frame = Frame::new("call").with("id", 1).to_bytes().unwrap();
        let mut stream = Compress::new(Compression::new(1), false);
        let mut dst = BytesMut::new();
        AgentLinkCodec::deflate_into(&mut stream, &frame[..frame.len() - 1], &mut dst);
        dst.extend_from_slice(&frame);
        let err = decode_all(dst).unwrap_err();
        assert!(err.to_string().contains("inside a compressed one"), "{err}");
    }

    #[test]
    fn the_agent_uses_the_same_numbers() {
        let agent = include_str!("../../mux/agent/ferrogen_agent/link.py");
        for line in [
            format!("SEGMENT_FLAG = {SEGMENT_FLAG:#x}\n"),
            format!("SEGMENT_MAX = {SEGMENT_MAX:#x}\n"),
            format!("PROBE_MIN_BODY = {PROBE_MIN_BODY}\n"),
            format!("PROBE_SAMPLE = {PROBE_SAMPLE}\n"),
            format!("PROBE_PERCENT = {PROBE_PERCENT}\n"),
            format!("PATCH_TAG = {PATCH_TAG:#x}\n"),
            format!("PATCH_BASE_MAX = {PATCH_BASE_MAX}\n"),
        ] {
            assert!(
                agent.contains(&line),
                "mux/agent/ferrogen_agent/link.py lacks {line:?}"
            );
        }
    }

    #[test]
    fn probe_tells_random_from_text() {
        assert!(!worth_compressing(&random_bytes(1 << 20)));
        assert!(worth_compressing(&text(1 << 20)));
        assert!(worth_compressing(&random_bytes(100)));
        assert!(!worth_compressing(&random_bytes(PROBE_MIN_BODY)));
    }
}
