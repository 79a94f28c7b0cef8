//! Property tests of the frame decoder against hostile input: arbitrary bytes, cut into
//! arbitrary pieces, never make [`FrameCodec`] panic; it yields frames, waits for more, or
//! returns a typed [`FrameError`], and the same bytes decode the same way however they are
//! split.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::Decoder;
use worker_ipc::{Frame, FrameCodec, FrameError, MAX_BODY, MAX_HEADER};

/// What decoding a byte stream produced: the frames, then how it ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The input ended cleanly after these frames.
    Clean(Vec<Frame>),
    /// These frames, then an error (only its display is compared).
    Failed(Vec<Frame>, String),
}

/// Feeds `data` to a fresh codec in pieces whose sizes cycle through `cuts`, then ends the
/// stream, as `FramedRead` does.
fn decode_in_pieces(data: &[u8], cuts: &[usize]) -> Outcome {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut offset = 0;
    let mut cut = cuts.iter().cycle();
    while offset < data.len() {
        let n = (*cut.next().unwrap_or(&1)).clamp(1, data.len() - offset);
        buf.put_slice(&data[offset..offset + n]);
        offset += n;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => return Outcome::Failed(frames, check_error(err)),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return Outcome::Clean(frames),
            Err(err) => return Outcome::Failed(frames, check_error(err)),
        }
    }
}

/// Every error is one of the typed kinds, with a non-empty message.
fn check_error(err: FrameError) -> String {
    match &err {
        FrameError::TooLarge { len, .. } => {
            assert!(*len == 0 || *len > MAX_BODY.min(MAX_HEADER) as u64)
        }
        FrameError::BadHeader(_)
        | FrameError::MissingType
        | FrameError::BadSegment(_)
        | FrameError::Io(_) => {}
        FrameError::OverBudget { .. } => panic!("the plain codec has no budget: {err}"),
    }
    let text = err.to_string();
    assert!(!text.is_empty());
    text
}

/// A valid frame with an arbitrary type, field and body.
fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        "[a-z_]{1,12}",
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(kind, n, body)| Frame::new(&kind).with("n", n).with_body(body))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..512),
        cuts in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let whole = decode_in_pieces(&data, &[data.len().max(1)]);
        let pieces = decode_in_pieces(&data, &cuts);
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn valid_frames_then_garbage(
        frames in proptest::collection::vec(arb_frame(), 0..5),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in proptest::collection::vec(1usize..32, 1..8),
    ) {
        let mut wire = BytesMut::new();
        for frame in &frames {
            frame.encode_into(&mut wire).unwrap();
        }
        wire.put_slice(&garbage);
        let decoded = match decode_in_pieces(&wire, &cuts) {
            Outcome::Clean(decoded) | Outcome::Failed(decoded, _) => decoded,
        };
        // The valid frames always come out first, whatever follows them.
        prop_assert!(decoded.len() >= frames.len());
        prop_assert_eq!(&decoded[..frames.len()], &frames[..]);
    }

    #[test]
    fn plausible_prefixes_with_json_ish_headers(
        header in "[{}\"a-z:,0-9 \\[\\]]{0,40}",
        body_len in 0u32..16,
        declared in prop_oneof![Just(None), (0u32..64).prop_map(Some)],
        cuts in proptest::collection::vec(1usize..16, 1..6),
    ) {
        let mut wire = BytesMut::new();
        wire.put_u32(declared.unwrap_or(header.len() as u32));
        wire.put_u32(body_len);
        wire.put_slice(header.as_bytes());
        wire.put_slice(&vec![0u8; body_len as usize]);
        let _ = decode_in_pieces(&wire, &cuts);
    }
}
