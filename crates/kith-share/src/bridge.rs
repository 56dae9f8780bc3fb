//! Blocking `Read`/`Write` adapters over async streams, for the store's synchronous
//! verified import and range encoding, which run on tokio's blocking pool.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::Notify;

/// A cancellation flag a blocking reader checks while it waits for bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cancel {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Cancel {
    pub(crate) fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub(crate) async fn cancelled(&self) {
        loop {
            let n = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            n.await;
        }
    }
}

fn cancelled_err() -> io::Error {
    io::Error::other("request cancelled")
}

/// Called with the bytes read so far, every [`ACTIVITY_EVERY`] bytes.
pub(crate) type OnActivity = Box<dyn FnMut(u64) + Send>;

/// How often a [`BlockingReader`] reports activity.
pub(crate) const ACTIVITY_EVERY: u64 = 64 * 1024;

/// Reads an async stream from a blocking thread; fails once cancelled.
pub(crate) struct BlockingReader<R> {
    pub(crate) inner: R,
    rt: Handle,
    cancel: Cancel,
    read: u64,
    next_report: u64,
    on_activity: Option<OnActivity>,
}

impl<R: AsyncRead + Unpin> BlockingReader<R> {
    pub(crate) fn new(inner: R, rt: Handle, cancel: Cancel) -> Self {
        Self {
            inner,
            rt,
            cancel,
            read: 0,
            next_report: ACTIVITY_EVERY,
            on_activity: None,
        }
    }

    /// Reports progress to `f` as bytes arrive.
    pub(crate) fn with_activity(mut self, f: OnActivity) -> Self {
        self.on_activity = Some(f);
        self
    }
}

impl<R: AsyncRead + Unpin> Read for BlockingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(cancelled_err());
        }
        let inner = &mut self.inner;
        let cancel = &self.cancel;
        let n = self.rt.block_on(async {
            let first = tokio::select! {
                r = inner.read(buf) => r,
                _ = cancel.cancelled() => Err(cancelled_err()),
            }?;
            // Whatever else has arrived already is taken without waiting: one hand-off
            // between threads per burst of packets, not per packet.
            let mut filled = first;
            while first > 0 && filled < buf.len() {
                match crate::bridge::now_or_never(inner.read(&mut buf[filled..])) {
                    Some(Ok(k)) if k > 0 => filled += k,
                    _ => break,
                }
            }
            Ok::<_, io::Error>(filled)
        })?;
        self.read += n as u64;
        if self.read >= self.next_report {
            self.next_report = self.read + ACTIVITY_EVERY;
            if let Some(f) = self.on_activity.as_mut() {
                f(self.read);
            }
        }
        Ok(n)
    }
}

/// Polls a future once, with a waker that does nothing: its value if it is ready now.
pub(crate) fn now_or_never<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Paces writes to at most `rate` bytes per second, shared by every writer of one peer.
#[derive(Debug)]
pub(crate) struct Pacer {
    rate: u64,
    next: std::sync::Mutex<Option<Instant>>,
}

impl Pacer {
    pub(crate) fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            next: std::sync::Mutex::new(None),
        }
    }

    /// When `n` more bytes may go out.
    fn reserve(&self, n: usize) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let start = next.map_or(now, |t| t.max(now));
        *next = Some(start + Duration::from_secs_f64(n as f64 / self.rate as f64));
        start
    }
}

/// Writes to an async stream from a blocking thread, paced by every pacer given (one
/// per peer, one for the whole node), and counts what it wrote.
pub(crate) struct BlockingWriter<W> {
    pub(crate) inner: W,
    rt: Handle,
    pacers: Vec<Arc<Pacer>>,
    written: Arc<AtomicU64>,
}

impl<W: AsyncWrite + Unpin> BlockingWriter<W> {
    pub(crate) fn new(
        inner: W,
        rt: Handle,
        pacers: Vec<Arc<Pacer>>,
        written: Arc<AtomicU64>,
    ) -> Self {
        Self {
            inner,
            rt,
            pacers,
            written,
        }
    }
}

impl<W: AsyncWrite + Unpin> Write for BlockingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Pacing sleeps this blocking thread itself: a tokio timer here
        // would panic if the runtime shuts down mid-upload.
        if let Some(at) = self.pacers.iter().map(|p| p.reserve(buf.len())).max() {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
        let inner = &mut self.inner;
        let n = self
            .rt
            .block_on(async { inner.write_all(buf).await.map(|()| buf.len()) })?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let inner = &mut self.inner;
        self.rt.block_on(inner.flush())
    }
}
