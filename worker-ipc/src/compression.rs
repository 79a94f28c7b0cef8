//! Compression of the agent link: what the mux and an agent send each other crosses the
//! network deflated, where that pays, without ssh's own `-C` (docs/protocol.md, "Compression
//! on the agent link").
//!
//! The link carries these units, told apart by their first byte:
//!
//! ```text
//! frame      u32 BE header_len (its first byte is 0x00, or 0x01 for a 16 MiB header), ...
//! patch      u8 0x02, u16 BE start, u16 BE removed, u8 len, then len bytes (mux only)
//! increment  u8 0x03, u8 back (mux only)
//! bulk       u8 0x04, u16 BE len (len 1 ..= BULK_PIECE_MAX), then len bytes of the bulk stream
//! short      u8 0x40 | len (len 1 ..= SHORT_SEGMENT_MAX), then len bytes of the link's stream
//! segment    u16 BE 0x8000 | len (len 1 ..= SEGMENT_MAX), then len bytes of the link's stream
//! ```
//!
//! A patch is the frame before it in the same direction, its encoding's bytes `start ..
//! start + removed` replaced by the patch's `len` bytes: the next loop item's call, which
//! differs from the last one in its id, costs 7 bytes where a segment costs 20 (deflate covers
//! at most 258 repeated bytes per code, and a call is a kilobyte). An increment is that frame
//! with the decimal number whose digits start `back` bytes before the end of its header one
//! more (the header's length one more when the number gains a digit): the call of a loop whose
//! arguments do not change costs 2 bytes, which ssh puts in its smallest packet (a call's id is
//! among the last of its header's fields, which serialize in name order). The frame patched or
//! incremented is the last one sent whatever way it went, if its encoding is at most
//! [`PATCH_BASE_MAX`] bytes (none otherwise). Only the mux sends patches and increments; the
//! agent reads them (link.py).
//!
//! Segments, short or not, continue one deflate stream per direction, kept for the link's
//! lifetime, so a frame much like an earlier one (the next loop item's call, its reply) costs a
//! few bytes. The agent deflates frames with a body of [`PROBE_MIN_BODY`] bytes or more on a
//! second stream of its own, the bulk stream, at its fastest level, and its small frames at its
//! best, which a reply's few fresh digits need to fit ssh's next smaller packet; the mux's one
//! stream carries everything at [`MUX_LEVEL`]. Each frame sent compressed is the ordinary
//! encoding of a frame, deflated and flushed (`Z_PARTIAL_FLUSH`, as ssh's own compression
//! does) before anything else is sent, so a frame never straddles another unit. A frame whose
//! body does not shrink goes as it is, byte for byte what [`FrameCodec`] writes:
//! [`worth_compressing`] deflates a few samples of it, which costs about 1% of compressing it
//! all.
//!
//! Decompression is bounded: inflated bytes go through a [`FrameCodec`], whose length checks
//! refuse a frame over the limits as soon as its prefix is inflated, and one unit inflates to
//! at most [`INFLATE_RATIO_MAX`] times its size (deflate's own bound), so the buffer never holds
//! more than the frame being assembled and one unit's output.

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

/// A sample whose bytes are spread this evenly (order-0 entropy, in bits per byte) is taken as
/// one that does not shrink, without deflating it, which costs ten times as much: random and
/// already-compressed data come to 7.93 to 7.97 over a sample, text and base64 to 6 or less. A
/// block of random bytes repeated within a sample falls below it while the block is under a
/// third of a sample; a longer one goes as it is, though deflate would shrink it a little.
const EVEN_BITS_PER_BYTE: f64 = 7.9;

/// The deflate level of the mux's stream, low to keep pace with the network for bulk data; the
/// long repeats of one frame in the next are found about as well as at the higher levels. Not
/// 1: zlib-rs's level 1 codes with fixed Huffman tables only, which leaves base64 text (module
/// zips) unshrunk. The agent's CPython zlib uses 1, which has dynamic tables; the receiving side
/// does not depend on either.
pub const MUX_LEVEL: u32 = 2;

/// The first byte of a patch.
pub const PATCH_TAG: u8 = 0x02;

/// The first byte of an increment.
pub const INCREMENT_TAG: u8 = 0x03;

/// The first byte of a piece of the agent's bulk stream.
pub const BULK_TAG: u8 = 0x04;

/// Largest deflate payload of one bulk piece (its u16 length).
pub const BULK_PIECE_MAX: usize = 0xffff;

/// The bits of a unit's first byte that mark a short segment, whose length is the other six: a
/// loop item's reply is some 30 bytes of deflate, and a byte less can save ssh a packet size.
pub const SHORT_SEGMENT_FLAG: u8 = 0x40;

/// Largest deflate payload of a short segment.
pub const SHORT_SEGMENT_MAX: usize = 0x3f;

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
    let samples = probe_samples(body.len()).map(|(start, len)| &body[start..start + len]);
    samples_worth_compressing(&samples)
}

/// Where the probe's samples of a body of `body_len` bytes lie: (start, length) of its start,
/// middle and end, for a caller that reads them itself (a put's chunk still in its file).
pub fn probe_samples(body_len: usize) -> [(usize, usize); 3] {
    let len = PROBE_SAMPLE.min(body_len);
    let middle = body_len / 2 - len / 2;
    [(0, len), (middle, len), (body_len - len, len)]
}

/// [`worth_compressing`] for a body of [`PROBE_MIN_BODY`] bytes or more, from its samples
/// ([`probe_samples`]).
pub fn samples_worth_compressing(samples: &[&[u8]; 3]) -> bool {
    PROBE.with(|probe| samples_shrink(samples, &mut probe.borrow_mut()))
}

fn samples_shrink(samples: &[&[u8]; 3], probe: &mut Compress) -> bool {
    if samples.iter().all(|sample| evenly_spread(sample)) {
        return false;
    }
    let mut input = 0;
    let mut output = 0;
    let mut scratch = vec![0u8; 2 * PROBE_SAMPLE];
    for sample in samples {
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

/// Whether the bytes of sample are spread at least [`EVEN_BITS_PER_BYTE`] evenly.
fn evenly_spread(sample: &[u8]) -> bool {
    let mut counts = [0u32; 256];
    for &byte in sample {
        counts[usize::from(byte)] += 1;
    }
    let size = sample.len() as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let share = f64::from(count) / size;
            -share * share.log2()
        })
        .sum();
    bits >= EVEN_BITS_PER_BYTE
}

/// Codec for the agent link: decodes frames and segments alike, and encodes frames compressed
/// where [`worth_compressing`] says so (or never, for [`AgentLinkCodec::plain`]).
pub struct AgentLinkCodec {
    /// Frames that cross the link as they are.
    raw: FrameCodec,
    /// Frames inside the inflated stream.
    inner: FrameCodec,
    /// The peer's stream, of segments.
    inflater: Decompress,
    /// The peer's bulk stream (agents only), made when its first piece arrives.
    bulk_inflater: Option<Decompress>,
    /// Whether the frame being inflated came from the bulk stream: a frame never straddles
    /// the two.
    inflating_bulk: bool,
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
            bulk_inflater: None,
            inflating_bulk: false,
            inflated: BytesMut::new(),
            deflater: None,
            last_sent: None,
        }
    }

    /// Appends the prefix and header of `frame`, which goes as it is, for a body of `body_len`
    /// bytes that the caller writes to the link right after them (a put's chunk that the probe
    /// found incompressible, moved from its file by splice(2)).
    ///
    /// # Errors
    ///
    /// As [`Frame::encode_head_into`].
    pub fn encode_head(
        &mut self,
        frame: &Frame,
        body_len: usize,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        self.last_sent = None;
        frame.encode_head_into(body_len, dst)
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

    /// Appends `plain` (an encoded frame) to `dst` as an increment of the last frame sent, if
    /// it is that frame with one number of its header one more; says whether it did.
    fn increment_into(last: &[u8], plain: &[u8], dst: &mut BytesMut) -> bool {
        // The number ends where the two stop agreeing from the back: its last digit changes.
        let same_end = last
            .iter()
            .rev()
            .zip(plain.iter().rev())
            .take_while(|(x, y)| x == y)
            .count();
        let end = last.len() - same_end;
        let digits = last[..end]
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let start = end - digits;
        let header_end = crate::frame::PREFIX_LEN
            + u32::from_be_bytes([last[0], last[1], last[2], last[3]]) as usize;
        let Some(Ok(back)) = header_end.checked_sub(start).map(u8::try_from) else {
            return false;
        };
        if digits == 0 || incremented(last, back).as_deref() != Some(plain) {
            return false;
        }
        dst.put_u8(INCREMENT_TAG);
        dst.put_u8(back);
        true
    }

    /// Inflates one unit's deflate data onto the frame buffer, from the bulk stream or the
    /// link's.
    fn inflate(&mut self, mut input: &[u8], bulk: bool) -> Result<(), FrameError> {
        if bulk != self.inflating_bulk && (!self.inflated.is_empty() || self.inner.in_frame()) {
            return Err(bad_segment("a frame split between the two streams"));
        }
        self.inflating_bulk = bulk;
        let inflater = if bulk {
            self.bulk_inflater
                .get_or_insert_with(|| Decompress::new(false))
        } else {
            &mut self.inflater
        };
        while !input.is_empty() {
            let start = self.inflated.len();
            self.inflated.resize(start + INFLATE_STEP, 0);
            let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
            let status =
                inflater.decompress(input, &mut self.inflated[start..], FlushDecompress::Sync);
            let consumed = (inflater.total_in() - in_before) as usize;
            let produced = (inflater.total_out() - out_before) as usize;
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
            } else if produced <= SHORT_SEGMENT_MAX {
                dst.copy_within(tag + 2.., tag + 1);
                dst.truncate(tag + 1 + produced);
                dst[tag] = SHORT_SEGMENT_FLAG | produced as u8;
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

/// `frame` (an encoding) with the decimal number whose digits start `back` bytes before the end
/// of its header one more, and its header length one more if the number gains a digit; `None`
/// where no number of the header starts there. The agent's `incremented` (link.py) is the same.
fn incremented(frame: &[u8], back: u8) -> Option<Vec<u8>> {
    let prefix = crate::frame::PREFIX_LEN;
    let header_len = u32::from_be_bytes(frame.get(..4)?.try_into().ok()?) as usize;
    let header = frame.get(..prefix + header_len)?;
    let start = header.len().checked_sub(usize::from(back))?;
    let digits = header[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if start < prefix || digits == 0 || header[start - 1].is_ascii_digit() {
        return None;
    }
    let number: u64 = std::str::from_utf8(&header[start..start + digits])
        .ok()?
        .parse()
        .ok()?;
    let next = number.checked_add(1)?.to_string();
    let grown = next.len() - digits;
    let mut out = Vec::with_capacity(frame.len() + grown);
    out.extend_from_slice(&((header_len + grown) as u32).to_be_bytes());
    out.extend_from_slice(&frame[4..start]);
    out.extend_from_slice(next.as_bytes());
    out.extend_from_slice(&frame[start + digits..]);
    Some(out)
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
            let (prefix, len, bulk) = match first {
                PATCH_TAG => return Err(bad_segment("a patch, which only the mux sends")),
                INCREMENT_TAG => return Err(bad_segment("an increment, which only the mux sends")),
                BULK_TAG if src.len() < 3 => return Ok(None),
                BULK_TAG => (3, usize::from(u16::from_be_bytes([src[1], src[2]])), true),
                _ if first & 0x80 != 0 && src.len() < 2 => return Ok(None),
                _ if first & 0x80 != 0 => {
                    let len = u16::from_be_bytes([src[0], src[1]]) & !SEGMENT_FLAG;
                    (2, usize::from(len), false)
                }
                _ if first & SHORT_SEGMENT_FLAG != 0 => {
                    (1, usize::from(first & !SHORT_SEGMENT_FLAG), false)
                }
                _ => {
                    if !self.inflated.is_empty() || self.inner.in_frame() {
                        return Err(bad_segment("a plain frame inside a compressed one"));
                    }
                    return self.raw.decode(src);
                }
            };
            if len == 0 {
                return Err(bad_segment("empty segment"));
            }
            if src.len() < prefix + len {
                src.reserve(prefix + len - src.len());
                return Ok(None);
            }
            src.advance(prefix);
            let unit = src.split_to(len);
            self.inflate(&unit, bulk)?;
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
                let patched = self.last_sent.as_ref().is_some_and(|last| {
                    AgentLinkCodec::increment_into(last, &plain, dst)
                        || AgentLinkCodec::patch_into(last, &plain, dst)
                });
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

    /// Whether a unit is a segment of the link's stream, short or not.
    fn deflated(unit: &[u8]) -> bool {
        unit[0] & 0x80 != 0 || unit[0] & 0xc0 == SHORT_SEGMENT_FLAG
    }

    fn call_with_params(id: u64) -> Frame {
        Frame::new("call").with("id", id).with(
            "args",
            json!({"params": "x".repeat(1000), "module_fqn": "ansible.builtin.command"}),
        )
    }

    #[test]
    fn a_call_like_the_last_but_its_id_goes_as_a_patch() {
        let call = call_with_params;
        let mut codec = AgentLinkCodec::compressing();
        assert!(deflated(&wire(&mut codec, &[call(10)])));
        let patch = wire(&mut codec, &[call(12)]);
        let plain = call(10).to_bytes().unwrap();
        let start = plain
            .iter()
            .zip(call(12).to_bytes().unwrap().iter())
            .take_while(|(a, b)| a == b)
            .count();
        let [high, low] = (start as u16).to_be_bytes();
        assert_eq!(&patch[..], &[PATCH_TAG, high, low, 0, 1, 1, b'2'][..]);
        let text = chunk(text(2 * PROBE_MIN_BODY));
        assert!(deflated(&wire(&mut codec, &[text])));
        // After a frame too different, a segment again; after a random chunk, no patch either.
        assert!(deflated(&wire(&mut codec, &[call(20)])));
        assert_eq!(wire(&mut codec, &[call(22)])[0], PATCH_TAG);
        wire(&mut codec, &[chunk(random_bytes(1 << 16))]);
        assert!(deflated(&wire(&mut codec, &[call(24)])));
        let plain_wire = wire(&mut AgentLinkCodec::plain(), &[call(1), call(3)]);
        let both = [call(1).to_bytes().unwrap(), call(3).to_bytes().unwrap()].concat();
        assert_eq!(plain_wire, both, "a plain codec sends no patches");
        let err = decode_all(patch).unwrap_err();
        assert!(err.to_string().contains("only the mux sends"), "{err}");
    }

    #[test]
    fn the_next_call_of_a_loop_goes_as_an_increment_of_two_bytes() {
        let call = call_with_params;
        let mut codec = AgentLinkCodec::compressing();
        wire(&mut codec, &[call(8)]);
        // The header's fields serialize in name order, so the id comes after the arguments.
        let eight = call(8).to_bytes().unwrap();
        let header_end = eight.len();
        let start = header_end - eight.iter().rev().position(|b| *b == b'8').unwrap() - 1;
        let back = (header_end - start) as u8;
        for id in [9, 10, 11, 99, 100] {
            if id == 99 {
                wire(&mut codec, &[call(98)]);
            }
            let sent = wire(&mut codec, &[call(id)]);
            // Counted from the end of the last call's header, whose id has one digit less.
            let back = back + (id - 1).to_string().len() as u8 - 1;
            assert_eq!(&sent[..], &[INCREMENT_TAG, back][..], "call {id}");
        }
        // The header grows with the number: its length in the prefix is one more.
        let nine = call(9).to_bytes().unwrap();
        assert_eq!(
            incremented(&nine, back).unwrap(),
            call(10).to_bytes().unwrap()
        );
        // No number starts there, or it starts in the middle of one, or before the header.
        assert_eq!(incremented(&nine, back + 1), None);
        assert_eq!(incremented(&call(10).to_bytes().unwrap(), back), None);
        assert_eq!(incremented(&nine, 0), None);
        assert_eq!(incremented(&nine, 255), None);
        let err = decode_all(BytesMut::from(&[INCREMENT_TAG, back][..])).unwrap_err();
        assert!(err.to_string().contains("only the mux sends"), "{err}");
    }

    /// `plain` as an agent sends a large frame: pieces of a bulk stream.
    fn bulk_pieces(stream: &mut Compress, plain: &[u8]) -> BytesMut {
        let mut deflated = vec![0u8; plain.len() + 1024];
        let before = stream.total_out();
        stream
            .compress(plain, &mut deflated, FlushCompress::Partial)
            .unwrap();
        deflated.truncate((stream.total_out() - before) as usize);
        let mut dst = BytesMut::new();
        for piece in deflated.chunks(BULK_PIECE_MAX) {
            dst.put_u8(BULK_TAG);
            dst.put_u16(piece.len() as u16);
            dst.put_slice(piece);
        }
        dst
    }

    #[test]
    fn bulk_pieces_and_segments_interleave_by_frame_and_short_segments_are_read() {
        let reply = |id: u64| {
            Frame::new("reply")
                .with("ok", true)
                .with("result", json!({"n": id * 7}))
        };
        let text_chunk = chunk(text(300_000));
        let mut agent = AgentLinkCodec::compressing();
        let mut bulk = Compress::new(Compression::new(1), false);
        let mut sent = wire(&mut agent, &[reply(1)]);
        sent.extend_from_slice(&bulk_pieces(&mut bulk, &text_chunk.to_bytes().unwrap()));
        let second_reply = wire(&mut agent, &[reply(2)]);
        assert_eq!(
            second_reply[0] & 0xc0,
            SHORT_SEGMENT_FLAG,
            "{second_reply:?}"
        );
        assert!(second_reply.len() <= 1 + SHORT_SEGMENT_MAX);
        sent.extend_from_slice(&second_reply);
        sent.extend_from_slice(&bulk_pieces(&mut bulk, &text_chunk.to_bytes().unwrap()));
        assert!(sent.len() < 200_000, "{}", sent.len());
        let frames = decode_all(sent).unwrap();
        assert_eq!(
            frames,
            vec![reply(1), text_chunk.clone(), reply(2), text_chunk.clone()]
        );

        // A frame begun on one stream and continued on the other is refused.
        let whole = text_chunk.to_bytes().unwrap();
        let mut split = bulk_pieces(
            &mut Compress::new(Compression::new(1), false),
            &whole[..1000],
        );
        let mut link_stream = Compress::new(Compression::new(1), false);
        AgentLinkCodec::deflate_into(&mut link_stream, &whole[1000..], &mut split);
        let err = decode_all(split).unwrap_err();
        assert!(
            err.to_string().contains("split between the two streams"),
            "{err}"
        );
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
            format!("INCREMENT_TAG = {INCREMENT_TAG:#x}\n"),
            format!("BULK_TAG = {BULK_TAG:#x}\n"),
            format!("BULK_PIECE_MAX = {BULK_PIECE_MAX:#x}\n"),
            format!("SHORT_SEGMENT_FLAG = {SHORT_SEGMENT_FLAG:#x}\n"),
            format!("SHORT_SEGMENT_MAX = {SHORT_SEGMENT_MAX:#x}\n"),
            format!("PATCH_BASE_MAX = {PATCH_BASE_MAX}\n"),
        ] {
            assert!(
                agent.contains(&line),
                "mux/agent/ferrogen_agent/link.py lacks {line:?}"
            );
        }
    }

    #[test]
    fn random_samples_are_evenly_spread_and_short_repeats_text_and_base64_are_not() {
        for sample in random_bytes(200 * PROBE_SAMPLE).chunks(PROBE_SAMPLE) {
            assert!(evenly_spread(sample));
        }
        let block = random_bytes(PROBE_SAMPLE / 4);
        let repeated = block.repeat(4);
        assert!(!evenly_spread(&repeated[..PROBE_SAMPLE]));
        assert!(worth_compressing(&repeated.repeat(16)));
        assert!(!evenly_spread(&text(PROBE_SAMPLE)));
        let base64: Vec<u8> = random_bytes(PROBE_SAMPLE)
            .iter()
            .map(|byte| {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                    [usize::from(byte % 64)]
            })
            .collect();
        assert!(!evenly_spread(&base64));
    }

    #[test]
    fn probe_tells_random_from_text() {
        assert!(!worth_compressing(&random_bytes(1 << 20)));
        assert!(worth_compressing(&text(1 << 20)));
        assert!(worth_compressing(&random_bytes(100)));
        assert!(!worth_compressing(&random_bytes(PROBE_MIN_BODY)));
    }
}
