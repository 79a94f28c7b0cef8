//! The frame: one JSON header object plus a raw body, length-prefixed.
//!
//! ```text
//! u32 big-endian   header_len     (1 ..= MAX_HEADER)
//! u32 big-endian   body_len       (0 ..= MAX_BODY)
//! header_len bytes UTF-8 JSON object; always has a string field "type"
//! body_len bytes   raw body
//! ```
//!
//! Headers are written as compact JSON with keys in sorted order (serde_json's default
//! map), so identical frames are identical bytes on both the Rust and the Python side.

use std::{fmt, io};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};
use tokio_util::codec::{Decoder, Encoder};

use crate::{MAX_BODY, MAX_HEADER};

/// Size of the fixed prefix: two big-endian `u32` lengths.
pub(crate) const PREFIX_LEN: usize = 8;

/// Most buffer space reserved ahead of the bytes of a frame still to come.
const RESERVE_AHEAD: usize = 1024 * 1024;

/// One frame on the worker or agent link.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Frame {
    /// The JSON header. Always holds a string `"type"` once decoded; [`Frame::new`] and
    /// [`Frame::from_message`] make sure frames built locally have one too.
    pub header: Map<String, Value>,
    /// The raw body (file data, stdin, command output, module zips); often empty.
    pub body: Bytes,
}

impl Frame {
    /// Builds a frame of the given `type` with no other header field and an empty body.
    pub fn new(kind: &str) -> Frame {
        let mut header = Map::new();
        header.insert("type".to_owned(), Value::String(kind.to_owned()));
        Frame {
            header,
            body: Bytes::new(),
        }
    }

    /// Builds a frame whose header is `msg` serialized to a JSON object.
    ///
    /// # Errors
    ///
    /// [`FrameError::BadHeader`] if `msg` does not serialize to an object, and
    /// [`FrameError::MissingType`] if that object has no string `"type"`.
    pub fn from_message<T: Serialize>(msg: &T, body: Bytes) -> Result<Frame, FrameError> {
        match serde_json::to_value(msg) {
            Ok(Value::Object(header)) => {
                check_type(&header)?;
                Ok(Frame { header, body })
            }
            Ok(other) => Err(FrameError::BadHeader(format!(
                "header must be a JSON object, not {}",
                json_kind(&other)
            ))),
            Err(err) => Err(FrameError::BadHeader(err.to_string())),
        }
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// Sets one header field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Frame {
        self.header.insert(key.to_owned(), value.into());
        self
    }

    /// The header's `"type"`, or `""` for a frame built by hand without one.
    pub fn kind(&self) -> &str {
        self.header
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Parses the header into a typed message, leaving the frame untouched.
    ///
    /// # Errors
    ///
    /// [`FrameError::BadHeader`] naming the field that did not fit.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        T::deserialize(&self.header)
            .map_err(|err| FrameError::BadHeader(format!("bad {:?} frame: {err}", self.kind())))
    }

    /// Appends the encoded frame to `dst`.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] if the header or body exceeds its limit.
    pub fn encode_into(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_head_into(self.body.len(), dst)?;
        dst.put_slice(&self.body);
        Ok(())
    }

    /// Appends the frame's prefix and header to `dst`, for a body of `body_len` bytes that
    /// the caller writes after them itself (its own body is left out).
    ///
    /// # Errors
    ///
    /// As [`Frame::encode_into`].
    pub fn encode_head_into(&self, body_len: usize, dst: &mut BytesMut) -> Result<(), FrameError> {
        let header = serde_json::to_vec(&self.header)
            .map_err(|err| FrameError::BadHeader(err.to_string()))?;
        if header.len() > MAX_HEADER {
            return Err(FrameError::TooLarge {
                which: FramePart::Header,
                len: header.len() as u64,
            });
        }
        if body_len > MAX_BODY {
            return Err(FrameError::TooLarge {
                which: FramePart::Body,
                len: body_len as u64,
            });
        }
        // Room for the frame's own body too, which encode_into appends (none for a caller
        // that writes the body itself).
        dst.reserve(PREFIX_LEN + header.len() + self.body.len());
        dst.put_u32(header.len() as u32);
        dst.put_u32(body_len as u32);
        dst.put_slice(&header);
        Ok(())
    }

    /// Encodes the frame into a fresh buffer (for blocking clients and tests).
    ///
    /// # Errors
    ///
    /// As [`Frame::encode_into`].
    pub fn to_bytes(&self) -> Result<Bytes, FrameError> {
        let mut buf = BytesMut::new();
        self.encode_into(&mut buf)?;
        Ok(buf.freeze())
    }

    /// Reads exactly one frame from a blocking reader (the `status` CLI and tests).
    ///
    /// # Errors
    ///
    /// [`FrameError::Io`] on read errors, including `UnexpectedEof` when the peer closes
    /// mid-frame or before one starts, and the decoding errors of [`FrameCodec`].
    pub fn read_from(reader: &mut impl io::Read) -> Result<Frame, FrameError> {
        let mut prefix = [0u8; PREFIX_LEN];
        reader.read_exact(&mut prefix)?;
        let (header_len, body_len) = check_prefix(&prefix)?;
        let mut rest = vec![0u8; header_len + body_len];
        reader.read_exact(&mut rest)?;
        let body = Bytes::from(rest.split_off(header_len));
        Ok(Frame {
            header: parse_header(&rest)?,
            body,
        })
    }
}

/// Which part of a frame a size error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePart {
    /// The JSON header.
    Header,
    /// The raw body.
    Body,
}

impl fmt::Display for FramePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FramePart::Header => "header",
            FramePart::Body => "body",
        })
    }
}

/// Why a frame could not be decoded or encoded. Every variant but `Io` is a protocol
/// error: the receiver logs it and closes that one connection.
#[derive(Debug)]
pub enum FrameError {
    /// The header or body length is over its limit (or a header length of zero).
    TooLarge {
        /// Which length was out of range.
        which: FramePart,
        /// The announced length.
        len: u64,
    },
    /// The header is not UTF-8 JSON, not an object, or does not fit the expected message.
    BadHeader(String),
    /// The header is a JSON object without a string `"type"`.
    MissingType,
    /// Taking in more of a partial frame would put the bytes that all connections hold in
    /// partial frames over the receiver's budget.
    OverBudget {
        /// What this connection would hold.
        buffered: usize,
        /// The budget for all connections together.
        budget: usize,
    },
    /// A compressed segment of the agent link is malformed (see [`crate::compression`]).
    BadSegment(String),
    /// The underlying stream failed.
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge {
                which: FramePart::Header,
                len: 0,
            } => f.write_str("frame header length is 0"),
            FrameError::TooLarge { which, len } => {
                let limit = match which {
                    FramePart::Header => MAX_HEADER,
                    FramePart::Body => MAX_BODY,
                };
                write!(
                    f,
                    "frame {which} of {len} bytes exceeds the limit of {limit}"
                )
            }
            FrameError::BadHeader(why) => write!(f, "bad frame header: {why}"),
            FrameError::MissingType => f.write_str("frame header has no string \"type\""),
            FrameError::OverBudget { buffered, budget } => write!(
                f,
                "a partial frame of {buffered} bytes would put the partial frames of all \
                 connections over the budget of {budget} bytes"
            ),
            FrameError::BadSegment(why) => write!(f, "bad compressed segment: {why}"),
            FrameError::Io(err) => write!(f, "i/o error: {err}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(err) => Some(err),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(err: io::Error) -> FrameError {
        FrameError::Io(err)
    }
}

/// Decoder and encoder of [`Frame`]s for `tokio_util::codec::{FramedRead, FramedWrite}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec {
    /// Lengths of the frame whose prefix was read but whose payload has not fully arrived,
    /// so the prefix is validated once and the buffer grown once per frame.
    pending: Option<(usize, usize)>,
}

impl FrameCodec {
    /// A codec with nothing pending.
    pub fn new() -> FrameCodec {
        FrameCodec::default()
    }

    /// Whether a frame's prefix has been read and the rest of it has not.
    pub(crate) fn in_frame(&self) -> bool {
        self.pending.is_some()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let (header_len, body_len) = match self.pending {
            Some(lens) => lens,
            None => {
                if src.len() < PREFIX_LEN {
                    return Ok(None);
                }
                let mut prefix = [0u8; PREFIX_LEN];
                prefix.copy_from_slice(&src[..PREFIX_LEN]);
                let lens = check_prefix(&prefix)?;
                src.advance(PREFIX_LEN);
                self.pending = Some(lens);
                lens
            }
        };
        if src.len() < header_len + body_len {
            // Grow with the bytes that actually arrive, not with what the prefix claims: a
            // hostile peer announcing 256 MiB and sending nothing must not cost 256 MiB.
            src.reserve((header_len + body_len - src.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        self.pending = None;
        let header = src.split_to(header_len);
        let body = src.split_to(body_len).freeze();
        Ok(Some(Frame {
            header: parse_header(&header)?,
            body,
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && self.pending.is_none() => Ok(None),
            None => Err(FrameError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a frame",
            ))),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        frame.encode_into(dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        frame.encode_into(dst)
    }
}

/// Validates the two length fields, returning `(header_len, body_len)`.
fn check_prefix(prefix: &[u8; PREFIX_LEN]) -> Result<(usize, usize), FrameError> {
    let header_len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let body_len = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
    if header_len == 0 || header_len > MAX_HEADER {
        return Err(FrameError::TooLarge {
            which: FramePart::Header,
            len: header_len as u64,
        });
    }
    if body_len > MAX_BODY {
        return Err(FrameError::TooLarge {
            which: FramePart::Body,
            len: body_len as u64,
        });
    }
    Ok((header_len, body_len))
}

/// Parses header bytes into a JSON object with a string `"type"`.
fn parse_header(bytes: &[u8]) -> Result<Map<String, Value>, FrameError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => {
            check_type(&map)?;
            Ok(map)
        }
        Ok(other) => Err(FrameError::BadHeader(format!(
            "header must be a JSON object, not {}",
            json_kind(&other)
        ))),
        Err(err) => Err(FrameError::BadHeader(err.to_string())),
    }
}

fn check_type(map: &Map<String, Value>) -> Result<(), FrameError> {
    match map.get("type") {
        Some(Value::String(_)) => Ok(()),
        _ => Err(FrameError::MissingType),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn raw(header: &[u8], body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(header.len() as u32);
        buf.put_u32(body.len() as u32);
        buf.put_slice(header);
        buf.put_slice(body);
        buf
    }

    fn decode_all(mut buf: BytesMut) -> Result<Vec<Frame>, FrameError> {
        let mut codec = FrameCodec::new();
        let mut out = Vec::new();
        while let Some(frame) = codec.decode_eof(&mut buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    #[test]
    fn round_trip_keeps_header_and_body() {
        let frame = Frame::new("call")
            .with("id", 7)
            .with("args", json!({"cmd": "true"}))
            .with_body(&b"stdin bytes"[..]);
        let mut buf = BytesMut::new();
        FrameCodec::new().encode(&frame, &mut buf).unwrap();
        assert_eq!(decode_all(buf).unwrap(), vec![frame]);
    }

    #[test]
    fn decodes_byte_by_byte() {
        let frames = vec![
            Frame::new("a").with_body(&b"xyz"[..]),
            Frame::new("b"),
            Frame::new("c").with("n", 1),
        ];
        let mut wire = BytesMut::new();
        for frame in &frames {
            frame.encode_into(&mut wire).unwrap();
        }
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            if let Some(frame) = codec.decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, frames);
    }

    #[test]
    fn truncated_input_is_an_eof_error() {
        let wire = Frame::new("hello")
            .with_body(&b"1234"[..])
            .to_bytes()
            .unwrap();
        for cut in 1..wire.len() {
            let err = decode_all(BytesMut::from(&wire[..cut])).unwrap_err();
            assert!(
                matches!(&err, FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
                "cut at {cut}: {err}"
            );
        }
        assert!(decode_all(BytesMut::new()).unwrap().is_empty());
    }

    #[test]
    fn garbage_header_is_bad_header() {
        let err = decode_all(raw(b"\xff\xfenot json", b"")).unwrap_err();
        assert!(matches!(err, FrameError::BadHeader(_)), "{err}");
        let err = decode_all(raw(b"[1,2]", b"")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad frame header: header must be a JSON object, not an array"
        );
    }

    #[test]
    fn header_without_type_is_missing_type() {
        let err = decode_all(raw(br#"{"id": 1}"#, b"")).unwrap_err();
        assert!(matches!(err, FrameError::MissingType));
        let err = decode_all(raw(br#"{"type": 1}"#, b"")).unwrap_err();
        assert!(matches!(err, FrameError::MissingType));
    }

    #[test]
    fn oversized_lengths_are_rejected_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_HEADER as u32 + 1);
        buf.put_u32(0);
        let err = FrameCodec::new().decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge { which: FramePart::Header, len } if len == MAX_HEADER as u64 + 1
        ));

        let mut buf = BytesMut::new();
        buf.put_u32(2);
        buf.put_u32(u32::MAX);
        let err = FrameCodec::new().decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                which: FramePart::Body,
                ..
            }
        ));
        assert!(
            err.to_string().contains("exceeds the limit of 268435456"),
            "{err}"
        );

        let mut buf = BytesMut::from(&[0u8; 8][..]);
        let err = FrameCodec::new().decode(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "frame header length is 0");
    }

    #[test]
    fn announced_lengths_do_not_reserve_memory_up_front() {
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_HEADER as u32);
        buf.put_u32(MAX_BODY as u32);
        let mut codec = FrameCodec::new();
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= 2 * RESERVE_AHEAD, "{}", buf.capacity());
    }

    #[test]
    fn blocking_reader_matches_codec() {
        let frame = Frame::new("blob")
            .with("hash", "ab")
            .with_body(&b"data"[..]);
        let wire = frame.to_bytes().unwrap();
        let mut reader = &wire[..];
        assert_eq!(Frame::read_from(&mut reader).unwrap(), frame);
        let err = Frame::read_from(&mut &wire[..5]).unwrap_err();
        assert!(matches!(err, FrameError::Io(_)));
    }

    #[test]
    fn header_keys_are_sorted_and_compact() {
        let wire = Frame::new("hello")
            .with("version", 1)
            .with("pid", 4)
            .to_bytes()
            .unwrap();
        assert_eq!(&wire[8..], br#"{"pid":4,"type":"hello","version":1}"#);
    }
}
