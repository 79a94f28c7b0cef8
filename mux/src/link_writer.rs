//! The write side of an agent link. The Target encodes each frame as it sends it (the
//! codec's deflate stream and patches are the link's state), and [`LinkWriter::writing`], a
//! future the Target runs in its context, writes the encodings in order.
//!
//! A put's chunk that the probe found incompressible is not read into the mux
//! ([`FileRegion`]): its frame's prefix and header go out, then its body moves from the source
//! file into the transport's stdin pipe with splice(2), on tokio's blocking pool, so the
//! bytes are copied once on this machine (by ssh, out of the pipe) rather than three times
//! (read into the mux, into the write buffer, into the pipe). A link that is no pipe (a route
//! through a hop) has the body read and written instead.

use std::{
    collections::VecDeque,
    future::Future,
    io::{self, IoSlice},
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::FileExt,
    },
    sync::Arc,
};

use bytes::{Buf, Bytes, BytesMut};
use nix::{
    errno::Errno,
    fcntl::{splice, SpliceFFlags},
    poll::{poll, PollFd, PollFlags, PollTimeout},
};
use tokio::{
    io::AsyncWriteExt,
    sync::mpsc::{self, UnboundedReceiver, UnboundedSender},
};
use tokio_util::codec::Encoder;
use worker_ipc::{AgentLinkCodec, Frame, FrameError};

use crate::{messages::FileRegion, transport::AgentWriter};

/// Most encodings gathered into one write: a burst of small frames (a loop's calls) goes out
/// in one system call, as the framed writer this replaced did.
const GATHER_MAX: usize = 64;

/// What the writing future writes next.
enum Piece {
    /// Encoded frames.
    Encoded(Bytes),
    /// A frame's prefix and header, then its body from a file.
    Region { head: Bytes, region: FileRegion },
}

/// The write side of one agent link, held by its Target.
pub struct LinkWriter {
    /// Encodes frames for this link.
    codec: AgentLinkCodec,
    /// Where encodings are made, then split off and queued.
    buffer: BytesMut,
    /// The writing future's queue; `None` once closed.
    queue: Option<UnboundedSender<Piece>>,
}

impl LinkWriter {
    /// A writer over `output` encoding with `codec`, and the future that writes what it is
    /// given, to be run in the Target's context; the future ends once the writer is closed
    /// and everything has been written, or with the first write error. `pipe` is a second
    /// handle on the pipe behind `output`, when it is one, for bodies moved by splice(2).
    pub fn new(
        output: AgentWriter,
        pipe: Option<OwnedFd>,
        codec: AgentLinkCodec,
    ) -> (LinkWriter, impl Future<Output = io::Result<()>>) {
        let (queue, pieces) = mpsc::unbounded_channel();
        let writer = LinkWriter {
            codec,
            buffer: BytesMut::new(),
            queue: Some(queue),
        };
        (writer, write_pieces(output, pipe.map(Arc::new), pieces))
    }

    /// Encodes `frame` and queues it.
    ///
    /// # Errors
    ///
    /// The frame cannot be encoded (too large); nothing is queued.
    pub fn write(&mut self, frame: &Frame) -> Result<(), FrameError> {
        self.codec.encode(frame, &mut self.buffer)?;
        let encoded = self.buffer.split().freeze();
        self.queue_piece(Piece::Encoded(encoded));
        Ok(())
    }

    /// Queues `frame` (its own body empty) with `region` as its body, sent as it is.
    ///
    /// # Errors
    ///
    /// As [`LinkWriter::write`].
    pub fn write_region(&mut self, frame: &Frame, region: FileRegion) -> Result<(), FrameError> {
        self.codec
            .encode_head(frame, region.len, &mut self.buffer)?;
        let head = self.buffer.split().freeze();
        self.queue_piece(Piece::Region { head, region });
        Ok(())
    }

    /// No more frames: the writing future ends once it has written those queued, and the
    /// transport's stdin is closed.
    pub fn close(&mut self) {
        self.queue = None;
    }

    fn queue_piece(&mut self, piece: Piece) {
        if let Some(queue) = &self.queue {
            // A closed receiver means the writing future ended on an error, already reported.
            let _ = queue.send(piece);
        }
    }
}

/// The writing future: each piece in order, encodings gathered into one vectored write.
async fn write_pieces(
    mut output: AgentWriter,
    pipe: Option<Arc<OwnedFd>>,
    mut pieces: UnboundedReceiver<Piece>,
) -> io::Result<()> {
    let mut encoded = VecDeque::new();
    while let Some(mut piece) = pieces.recv().await {
        loop {
            match piece {
                Piece::Encoded(bytes) => encoded.push_back(bytes),
                Piece::Region { head, region } => {
                    encoded.push_back(head);
                    write_all_of(&mut output, &mut encoded).await?;
                    output.flush().await?;
                    write_region(&mut output, pipe.clone(), region).await?;
                }
            }
            if encoded.len() >= GATHER_MAX {
                break;
            }
            match pieces.try_recv() {
                Ok(next) => piece = next,
                Err(_) => break,
            }
        }
        write_all_of(&mut output, &mut encoded).await?;
        output.flush().await?;
    }
    output.shutdown().await
}

/// Writes every byte of `pieces`, emptying it.
async fn write_all_of(output: &mut AgentWriter, pieces: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !pieces.is_empty() {
        let slices: Vec<IoSlice> = pieces
            .iter()
            .take(GATHER_MAX)
            .map(|piece| IoSlice::new(piece))
            .collect();
        let mut written = output.write_vectored(&slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let Some(front) = pieces.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                pieces.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
        while pieces.front().is_some_and(Bytes::is_empty) {
            pieces.pop_front();
        }
    }
    Ok(())
}

/// Writes `region`'s bytes after its head: spliced into `pipe` where there is one, read and
/// written otherwise; both on the blocking pool, as the file may have to be read from disk.
async fn write_region(
    output: &mut AgentWriter,
    pipe: Option<Arc<OwnedFd>>,
    region: FileRegion,
) -> io::Result<()> {
    let joined = match pipe {
        Some(pipe) => {
            tokio::task::spawn_blocking(move || splice_region(&region, &pipe).map(|()| None)).await
        }
        None => tokio::task::spawn_blocking(move || read_region(&region).map(Some)).await,
    };
    match joined.map_err(io::Error::other)?? {
        Some(body) => output.write_all(&body).await,
        None => Ok(()),
    }
}

/// The region's bytes; zeros where the file has grown shorter since its chunk was probed, so
/// the frame still has the length its prefix says (the agent's SHA-1 check then fails the put).
fn read_region(region: &FileRegion) -> io::Result<Vec<u8>> {
    let mut body = vec![0u8; region.len];
    let mut done = 0;
    while done < body.len() {
        match region
            .file
            .read_at(&mut body[done..], region.offset + done as u64)
        {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(body)
}

/// Moves the region's bytes from its file into `pipe` (non-blocking, as tokio left it) with
/// splice(2), waiting for room with poll(2); zeros after the file's end, as [`read_region`].
fn splice_region(region: &FileRegion, pipe: &OwnedFd) -> io::Result<()> {
    let mut offset = i64::try_from(region.offset).map_err(io::Error::other)?;
    let mut left = region.len;
    while left > 0 {
        match splice(
            region.file.as_fd(),
            Some(&mut offset),
            pipe.as_fd(),
            None,
            left,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        ) {
            Ok(0) => return write_zeros(pipe, left),
            Ok(n) => left -= n,
            Err(Errno::EAGAIN) => wait_for_room(pipe)?,
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Writes `len` zero bytes into `pipe`.
fn write_zeros(pipe: &OwnedFd, mut len: usize) -> io::Result<()> {
    let zeros = [0u8; 64 * 1024];
    while len > 0 {
        match nix::unistd::write(pipe, &zeros[..len.min(zeros.len())]) {
            Ok(n) => len -= n,
            Err(Errno::EAGAIN) => wait_for_room(pipe)?,
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Waits until `pipe` has room, or its reader is gone (the next write then says so).
fn wait_for_room(pipe: &OwnedFd) -> io::Result<()> {
    let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::NONE) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs::File,
        io::{Read, Write},
    };

    use super::*;

    fn file_of(content: &[u8]) -> Arc<File> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        Arc::new(file)
    }

    fn chunk_frame() -> Frame {
        Frame::new("chunk").with("id", 1).with("offset", 0)
    }

    /// What `frames` and `regions` (in order, a region after each frame that has one) come to
    /// through a writer over a real pipe, spliced when `splicing`.
    async fn through_pipe(pieces: Vec<(Frame, Option<FileRegion>)>, splicing: bool) -> Vec<u8> {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let spliced = splicing.then(|| write_end.try_clone().unwrap());
        let sender = tokio::net::unix::pipe::Sender::from_owned_fd(write_end).unwrap();
        let (mut writer, writing) =
            LinkWriter::new(Box::new(sender), spliced, AgentLinkCodec::plain());
        let reading = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            File::from(read_end).read_to_end(&mut out).unwrap();
            out
        });
        for (frame, region) in pieces {
            match region {
                Some(region) => writer.write_region(&frame, region).unwrap(),
                None => writer.write(&frame).unwrap(),
            }
        }
        writer.close();
        writing.await.unwrap();
        reading.await.unwrap()
    }

    fn expected(pieces: &[(Frame, Vec<u8>)]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for (frame, body) in pieces {
            let mut frame = frame.clone();
            frame.body = Bytes::from(body.clone());
            frame.encode_into(&mut out).unwrap();
        }
        out.to_vec()
    }

    #[tokio::test]
    async fn a_region_goes_as_the_frame_body_spliced_or_read() {
        let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = file_of(&content);
        let region = |offset: usize, len: usize| FileRegion {
            file: file.clone(),
            offset: offset as u64,
            len,
        };
        let small = Frame::new("ack").with("bytes", 3);
        let want = expected(&[
            (small.clone(), Vec::new()),
            (chunk_frame(), content[1000..201_000].to_vec()),
            (small.clone(), Vec::new()),
            (chunk_frame(), content[201_000..].to_vec()),
        ]);
        for splicing in [true, false] {
            let got = through_pipe(
                vec![
                    (small.clone(), None),
                    (chunk_frame(), Some(region(1000, 200_000))),
                    (small.clone(), None),
                    (chunk_frame(), Some(region(201_000, 99_000))),
                ],
                splicing,
            )
            .await;
            assert!(got == want, "splicing {splicing}: {} bytes", got.len());
        }
    }

    #[tokio::test]
    async fn a_region_past_the_end_of_its_file_is_made_up_with_zeros() {
        let file = file_of(b"short");
        for splicing in [true, false] {
            let region = FileRegion {
                file: file.clone(),
                offset: 2,
                len: 10,
            };
            let got = through_pipe(vec![(chunk_frame(), Some(region))], splicing).await;
            let want = expected(&[(chunk_frame(), b"ort\0\0\0\0\0\0\0".to_vec())]);
            assert_eq!(got, want, "splicing {splicing}");
        }
    }

    #[tokio::test]
    async fn a_writer_whose_reader_is_gone_reports_it() {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let spliced = write_end.try_clone().unwrap();
        let sender = tokio::net::unix::pipe::Sender::from_owned_fd(write_end).unwrap();
        let (mut writer, writing) =
            LinkWriter::new(Box::new(sender), Some(spliced), AgentLinkCodec::plain());
        drop(read_end);
        let region = FileRegion {
            file: file_of(&[1u8; 4096]),
            offset: 0,
            len: 4096,
        };
        writer.write_region(&chunk_frame(), region).unwrap();
        assert!(writing.await.is_err());
    }
}
