//! The HTTP server's own defences, below the routes: a bound on the connections held open,
//! and a deadline for each connection's first request head.
//!
//! Written here because poem exposes neither: its `Server` builds hyper's connection
//! without a timer, so hyper's header read timeout is off, and `idle_timeout` only
//! disables keep-alive on a connection that is still reading its first request, so a
//! client sending half a header would hold its connection (and a file descriptor) for as
//! long as it likes. Later requests on a kept-alive connection are bounded by the server's
//! `idle_timeout`, set in `app::serve_api`.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use poem::{
    http::uri::Scheme,
    listener::Acceptor,
    web::{LocalAddr, RemoteAddr},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};

/// Accepts at most `permits` connections at once (the others wait in the kernel's
/// backlog), and gives each `head_timeout` to send its first request head.
pub struct GuardedAcceptor<A> {
    inner: A,
    permits: Arc<Semaphore>,
    head_timeout: Duration,
}

impl<A> GuardedAcceptor<A> {
    pub fn new(inner: A, max_connections: usize, head_timeout: Duration) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            head_timeout,
        }
    }
}

impl<A: Acceptor> Acceptor for GuardedAcceptor<A> {
    type Io = GuardedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        // A slot first, then the connection: with every slot taken, new clients wait in
        // the backlog rather than being accepted and dropped in a busy loop.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (io, local, remote, scheme) = self.inner.accept().await?;
        let io = GuardedIo {
            inner: io,
            _permit: permit,
            deadline: Some(Box::pin(tokio::time::sleep(self.head_timeout))),
            line_ends: 0,
        };
        Ok((io, local, remote, scheme))
    }
}

/// A connection holding its slot, whose reads fail once its deadline passes before the
/// first request head ended (an empty line; HTTP/2's preface has one too).
pub struct GuardedIo<Io> {
    inner: Io,
    _permit: OwnedSemaphorePermit,
    deadline: Option<Pin<Box<Sleep>>>,
    /// Line ends seen in a row (`\r` ignored); two end the head.
    line_ends: u8,
}

impl<Io: AsyncRead + Unpin> AsyncRead for GuardedIo<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(deadline) = this.deadline.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        // Checked on every read, so a client trickling a byte at a time is cut off too.
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received in time",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            for &byte in &buf.filled()[before..] {
                match byte {
                    b'\n' => this.line_ends += 1,
                    b'\r' => {}
                    _ => this.line_ends = 0,
                }
                if this.line_ends >= 2 {
                    this.deadline = None;
                    break;
                }
            }
        }
        read
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for GuardedIo<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
