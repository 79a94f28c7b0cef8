//! Connection delegation (`mitogen_via`): a target whose spec names a `via` hop is not
//! started by the mux. [`Routed`] asks the Registry for the hop's Target (started, or shared,
//! as any other), and that Target asks its agent to start the next hop's transport and relay
//! its stdio as route frames. The routed Target gets a [`RouteWriter`] and a [`RouteReader`]
//! instead of a child's pipes; everything above them is the same as for a direct transport.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use actix::Recipient;
use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{mpsc, oneshot},
};
use worker_ipc::InterpId;

use super::{argv_for, kind_of, ConnectRequest, Connecting, Connector};
use crate::messages::{OpenRoute, RouteInput};

/// Connects targets with a `via` through their hop, the others with `direct`.
pub struct Routed {
    /// How targets without a hop are reached.
    pub direct: Arc<dyn Connector>,
    /// The Registry, which finds the hop's Target and hands it the route.
    pub registry: Recipient<OpenRoute>,
}

impl Connector for Routed {
    fn connect(&self, request: ConnectRequest) -> Connecting {
        let Some(via) = request.spec.via.clone() else {
            return self.direct.connect(request);
        };
        let ConnectRequest {
            spec,
            bootstrap,
            stderr_tail,
            name,
            ..
        } = request;
        let argv = argv_for(&spec, &bootstrap);
        // The hop's agent answers the transport's prompts, as the mux would have.
        let prompts = kind_of(spec.transport)
            .prompt_answers(&spec)
            .map(|answers| answers.for_route());
        let payload = Bytes::copy_from_slice(bootstrap.payload());
        let registry = self.registry.clone();
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            registry.do_send(OpenRoute {
                via: *via,
                argv,
                prompts,
                payload,
                stderr_tail,
                name,
                become_spec: spec.via_become.clone(),
                reply,
            });
            answer
                .await
                .unwrap_or_else(|_| Err("the mux stopped before the hop answered".into()))
        })
    }
}

/// The routed Target's write side: each write becomes a `route_data` frame on the hop's
/// connection; shutting down or dropping it closes the route.
pub struct RouteWriter {
    /// The route's number on the hop's connection.
    route: u64,
    /// The interpreter on the hop that runs it.
    interp: InterpId,
    /// The hop's Target.
    hop: Recipient<RouteInput>,
    /// Set once the route was closed, so it is closed once.
    closed: bool,
}

impl RouteWriter {
    /// The writer of route `route` carried by `hop`.
    pub fn new(route: u64, interp: InterpId, hop: Recipient<RouteInput>) -> RouteWriter {
        RouteWriter {
            route,
            interp,
            hop,
            closed: false,
        }
    }

    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.hop.do_send(RouteInput {
                route: self.route,
                interp: self.interp,
                data: None,
            });
        }
    }
}

impl AsyncWrite for RouteWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed || !self.hop.connected() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.hop.do_send(RouteInput {
            route: self.route,
            interp: self.interp,
            data: Some(Bytes::copy_from_slice(buf)),
        });
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close();
        Poll::Ready(Ok(()))
    }
}

impl Drop for RouteWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// The routed Target's read side: the bytes of the route's `route_data` frames, in order;
/// end of stream when the hop's Target drops the sending side (route closed, or hop gone).
pub struct RouteReader {
    /// What the hop's Target received for this route.
    incoming: mpsc::UnboundedReceiver<Bytes>,
    /// The part of the last piece the reader had no room for.
    leftover: Bytes,
}

impl RouteReader {
    /// A reader of what arrives on `incoming`.
    pub fn new(incoming: mpsc::UnboundedReceiver<Bytes>) -> RouteReader {
        RouteReader {
            incoming,
            leftover: Bytes::new(),
        }
    }
}

impl AsyncRead for RouteReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.leftover.is_empty() {
            match self.incoming.poll_recv(cx) {
                Poll::Ready(Some(piece)) => self.leftover = piece,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.leftover.len().min(buf.remaining());
        let piece = self.leftover.split_to(n);
        buf.put_slice(&piece);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn the_reader_yields_the_pieces_in_order_then_the_end() {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Bytes::from_static(b"hello ")).unwrap();
        tx.send(Bytes::from_static(b"world")).unwrap();
        drop(tx);
        let mut out = Vec::new();
        RouteReader::new(rx).read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello world");
    }
}
