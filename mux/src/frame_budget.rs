//! One budget for the bytes that all worker connections together hold in partial frames.
//!
//! A frame may announce up to `MAX_BODY` (256 MiB) and the codec buffers what arrives until
//! it is complete; each connection alone is thus bounded, but a few slow or hostile workers
//! together are not. [`BudgetedCodec`] charges what its connection holds to one process-wide
//! total and refuses to take in more once that total would pass the budget
//! ([`FRAME_BUDGET_ENV`], default [`DEFAULT_FRAME_BUDGET_MIB`] MiB): that connection gets a
//! protocol error and is closed, the others and the mux carry on (docs/protocol.md, "Frame").

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};
use worker_ipc::{Frame, FrameCodec, FrameError};

/// Environment variable setting the budget, in MiB.
pub const FRAME_BUDGET_ENV: &str = "FERROGEN_FRAME_BUDGET_MIB";

/// Default for [`FRAME_BUDGET_ENV`]: two frames of the largest size at once.
pub const DEFAULT_FRAME_BUDGET_MIB: usize = 512;

/// A budget and what is charged to it.
#[derive(Debug)]
pub struct Budget {
    /// Bytes the connections hold in partial frames now.
    in_use: AtomicUsize,
    /// The budget, in bytes.
    limit: AtomicUsize,
}

impl Budget {
    const fn new(limit: usize) -> Budget {
        Budget {
            in_use: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
        }
    }

    /// Sets the budget.
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }
}

/// The budget of the worker connections.
pub static WORKER_FRAMES: Budget = Budget::new(DEFAULT_FRAME_BUDGET_MIB << 20);

/// A [`FrameCodec`] whose buffered input counts against a budget.
#[derive(Debug)]
pub struct BudgetedCodec {
    inner: FrameCodec,
    budget: &'static Budget,
    /// What this connection has charged to the budget.
    charged: usize,
}

impl BudgetedCodec {
    /// A codec holding nothing, charging `budget`.
    pub fn new(budget: &'static Budget) -> BudgetedCodec {
        BudgetedCodec {
            inner: FrameCodec::new(),
            budget,
            charged: 0,
        }
    }

    /// Charges `buffered` bytes in place of what was charged before; refuses growth beyond
    /// the budget (and then gives back all this connection held, as it is being closed).
    fn charge(&mut self, buffered: usize) -> Result<(), FrameError> {
        if buffered > self.charged {
            let grown = buffered - self.charged;
            let budget = self.budget.limit.load(Ordering::Relaxed);
            let before = self.budget.in_use.fetch_add(grown, Ordering::Relaxed);
            if before + grown > budget {
                self.budget.in_use.fetch_sub(grown, Ordering::Relaxed);
                self.release();
                return Err(FrameError::OverBudget { buffered, budget });
            }
        } else {
            self.budget
                .in_use
                .fetch_sub(self.charged - buffered, Ordering::Relaxed);
        }
        self.charged = buffered;
        Ok(())
    }

    fn release(&mut self) {
        self.budget
            .in_use
            .fetch_sub(self.charged, Ordering::Relaxed);
        self.charged = 0;
    }
}

impl Drop for BudgetedCodec {
    fn drop(&mut self) {
        self.release();
    }
}

impl Decoder for BudgetedCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let decoded = self.inner.decode(src);
        if decoded.is_err() {
            self.release();
            return decoded;
        }
        self.charge(src.len())?;
        decoded
    }
}

impl Encoder<Frame> for BudgetedCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.inner.encode(frame, dst)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    /// The prefix and header of a frame announcing `body_len` bytes of body.
    fn partial_frame(body_len: usize) -> BytesMut {
        let header = br#"{"type":"blob"}"#;
        let mut buf = BytesMut::new();
        buf.put_u32(header.len() as u32);
        buf.put_u32(body_len as u32);
        buf.put_slice(header);
        buf
    }

    #[test]
    fn connections_share_one_budget_and_the_one_that_passes_it_is_refused() {
        static BUDGET: Budget = Budget::new(3 << 20);
        let (mut first, mut second) = (BudgetedCodec::new(&BUDGET), BudgetedCodec::new(&BUDGET));
        let mut first_buf = partial_frame(10 << 20);
        first_buf.put_bytes(0, 2 << 20);
        assert!(first.decode(&mut first_buf).unwrap().is_none());
        let mut second_buf = partial_frame(10 << 20);
        second_buf.put_bytes(0, 512 << 10);
        assert!(second.decode(&mut second_buf).unwrap().is_none());
        second_buf.put_bytes(0, 1 << 20);
        let err = second.decode(&mut second_buf).unwrap_err();
        assert!(
            matches!(err, FrameError::OverBudget { budget, .. } if budget == 3 << 20),
            "{err}"
        );
        assert!(err.to_string().contains("budget"), "{err}");

        // The refused connection gave its share back: a third fits, and a frame that
        // completes leaves nothing charged.
        let mut third = BudgetedCodec::new(&BUDGET);
        let mut third_buf = partial_frame(1 << 20);
        third_buf.put_bytes(0, 1 << 20);
        assert!(third.decode(&mut third_buf).unwrap().is_some());
        assert_eq!(third.charged, 0);
        drop(first);
        assert_eq!(BUDGET.in_use.load(Ordering::Relaxed), 0);
    }
}
