//! Blocking `Read`/`Write` adapters over async streams, for the store's synchronous
//! verified import and range encoding, which run on tokio's blocking pool.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kith_core::net::{BoxRecvStream, BoxSendStream};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc};

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

/// How often a [`ChunkReader`] reports activity: every report wakes the download's task,
/// and a stall is judged over hundreds of milliseconds.
pub(crate) const ACTIVITY_EVERY: u64 = 256 * 1024;

/// The most a receiving pump gathers before it hands bytes over.
const RECV_CHUNK: usize = 512 * 1024;

/// Fewer bytes than this wait up to [`HOLD`] for more before a pump hands them over:
/// every hand-over wakes the blocking reader, and on two cores at 250 MiB/s hand-overs
/// of 64 KiB cost twice the context switches of a plain stream.
const MIN_HANDOFF: usize = 256 * 1024;

/// How long a few bytes wait for more: short next to the scheduler's pipeline slack
/// (25 ms), since a slow stream's bytes would otherwise reach it late (at 20 MiB/s,
/// 40 KiB arrive meanwhile).
const HOLD: Duration = Duration::from_millis(2);

/// Chunks queued between a pump and its blocking side (each way).
const QUEUE: usize = 2;

/// Chunks read from the stream at once (QUIC hands over one per packet's frame).
const READ_CHUNKS: usize = 32;

/// Received chunks shorter than this are copied into one buffer (per read): a chunk
/// keeps alive the whole receive buffer it was cut from (quinn cuts a batch of datagrams,
/// up to 64 KiB, from one allocation), so a peer sending tiny frames could otherwise pin
/// far more memory than the bytes counted. A full packet's frame is longer.
const COMPACT_BELOW: usize = 1024;

/// The most chunks a pump gathers into one hand-over, however few bytes they hold.
const MAX_BATCH_CHUNKS: usize = 1024;

/// Reads an async stream from a blocking thread; fails once cancelled.
///
/// A task on the runtime (the pump) takes the bytes the stream received as the
/// transport holds them (no copy for QUIC), gathers up to [`RECV_CHUNK`] bytes of them
/// and queues the batch; the blocking side takes whole batches. The stream is read
/// where the connection lives, and the threads meet once per batch, not once per read:
/// reading a QUIC stream straight from a blocking thread contends with the connection's
/// driver for its lock and parks the thread for every packet.
/// At most `(QUEUE + 1) × RECV_CHUNK` bytes wait between the two.
pub(crate) struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<Bytes>>>,
    /// The batch being read, and the next of its chunks.
    batch: std::vec::IntoIter<Bytes>,
    cur: Bytes,
    cancel: Cancel,
    ended: bool,
    read: u64,
    next_report: u64,
    on_activity: Option<OnActivity>,
}

impl ChunkReader {
    /// Starts the pump on `rt`; it ends when the stream ends, fails or is cancelled, or
    /// when the reader is dropped (which drops the stream: QUIC tells the peer to stop).
    pub(crate) fn spawn(rt: &Handle, inner: BoxRecvStream, cancel: Cancel) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        rt.spawn(pump_in(inner, tx, cancel.clone()));
        Self {
            rx,
            batch: Vec::new().into_iter(),
            cur: Bytes::new(),
            cancel,
            ended: false,
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

    fn count(&mut self, n: usize) {
        self.read += n as u64;
        if self.read >= self.next_report {
            self.next_report = self.read + ACTIVITY_EVERY;
            if let Some(f) = self.on_activity.as_mut() {
                f(self.read);
            }
        }
    }
}

impl io::BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.cancel.is_cancelled() {
            return Err(cancelled_err());
        }
        while self.cur.is_empty() && !self.ended {
            if let Some(b) = self.batch.next() {
                self.cur = b;
                continue;
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.batch = b.into_iter(),
                Some(Err(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                // The pump ends without a word only at the end of the stream, or when
                // it was cancelled (and could not queue the error).
                None if self.cancel.is_cancelled() => return Err(cancelled_err()),
                None => self.ended = true,
            }
        }
        Ok(&self.cur)
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.cur.len());
        self.cur.advance(n);
        self.count(n);
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Whole chunks in one call where the caller has room: a read fills `buf`.
        let mut n = 0;
        while n < buf.len() {
            if n > 0 && self.cur.is_empty() && self.batch.len() == 0 {
                break; // more would wait for the pump
            }
            let have = io::BufRead::fill_buf(self)?;
            if have.is_empty() {
                break;
            }
            let k = have.len().min(buf.len() - n);
            buf[n..n + k].copy_from_slice(&have[..k]);
            io::BufRead::consume(self, k);
            n += k;
        }
        Ok(n)
    }
}

/// Reads `inner` for a [`ChunkReader`]: whatever is ready is gathered (up to
/// [`RECV_CHUNK`] bytes) while the queue is full, and handed over as soon as there is
/// room.
async fn pump_in(
    mut inner: BoxRecvStream,
    tx: mpsc::Sender<io::Result<Vec<Bytes>>>,
    cancel: Cancel,
) {
    let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
    let mut batch: Vec<Bytes> = Vec::new();
    let mut small = BytesMut::new();
    let mut held = 0usize;
    let mut eof = false;
    // When the bytes waiting now started to wait.
    let mut since: Option<tokio::time::Instant> = None;
    loop {
        if eof && batch.is_empty() {
            return; // dropping the sender is the end of the stream
        }
        // A few bytes are held back a moment for more to join them: a hand-over per
        // packet would wake the reader per packet.
        let waited = since.is_some_and(|t| t.elapsed() >= HOLD);
        let full = held >= RECV_CHUNK || batch.len() >= MAX_BATCH_CHUNKS;
        let ready = eof || waited || held >= MIN_HANDOFF || full;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let _ = tx.try_send(Err(cancelled_err()));
                return;
            }
            r = inner.read_chunks(&mut chunks), if !eof && !full => match r {
                Ok(None) => eof = true,
                Ok(Some(n)) => {
                    // Consecutive small chunks become one copy, in stream order.
                    let seal = |small: &mut BytesMut, batch: &mut Vec<Bytes>| {
                        if !small.is_empty() {
                            batch.push(small.split().freeze());
                        }
                    };
                    for c in chunks.iter_mut().take(n) {
                        let c = std::mem::take(c);
                        held += c.len();
                        if c.len() < COMPACT_BELOW {
                            small.extend_from_slice(&c);
                        } else {
                            seal(&mut small, &mut batch);
                            batch.push(c);
                        }
                    }
                    seal(&mut small, &mut batch);
                    since.get_or_insert_with(tokio::time::Instant::now);
                }
                Err(e) => {
                    if !batch.is_empty() && tx.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                        return;
                    }
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            },
            permit = tx.reserve(), if ready && !batch.is_empty() => match permit {
                Ok(p) => {
                    p.send(Ok(std::mem::take(&mut batch)));
                    held = 0;
                    since = None;
                }
                Err(_) => return, // the reader is gone
            },
            _ = tokio::time::sleep_until(since.unwrap_or_else(tokio::time::Instant::now) + HOLD),
                if !ready && since.is_some() => {}
            _ = tx.closed() => return,
        }
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

/// How much lateness a [`Pacer`] lets a writer make up.
const PACER_CATCH_UP: Duration = Duration::from_millis(10);

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

    /// When `n` more bytes may go out. A writer that comes late (a sleep that overran,
    /// a busy connection) may make up to [`PACER_CATCH_UP`] of it, so the lateness of
    /// each chunk does not add up to a rate below the limit; over any span the bytes
    /// sent stay within the rate plus that much.
    fn reserve(&self, n: usize) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let floor = now.checked_sub(PACER_CATCH_UP).unwrap_or(now);
        let start = next.map_or(now, |t| t.max(floor));
        *next = Some(start + Duration::from_secs_f64(n as f64 / self.rate as f64));
        start
    }
}

/// What a [`ChunkWriter`] hands its pump.
enum Out {
    Data(Bytes),
    /// Ends the stream; what it carries is dropped first (see
    /// [`ChunkWriter::finish_releasing`]).
    Finish(Box<dyn Send>),
    Reset(u32),
}

/// Writes to an async stream from a blocking thread and counts what it wrote.
///
/// Bytes are gathered into chunks of `chunk` bytes that a task on the runtime (the
/// pump) writes to the stream, so the blocking thread never waits on the connection
/// itself and the threads meet once per chunk. At most `(QUEUE + 2) × chunk` bytes wait
/// between the writer and the stream. A writer dropped without
/// [`finish_releasing`](Self::finish_releasing) resets the stream: an answer cut short
/// never looks whole.
pub(crate) struct ChunkWriter {
    tx: mpsc::Sender<Out>,
    buf: BytesMut,
    chunk: usize,
}

impl ChunkWriter {
    /// Starts the pump on `rt`; the handle yields how the stream ended.
    pub(crate) fn spawn(
        rt: &Handle,
        inner: BoxSendStream,
        chunk: usize,
        written: Arc<AtomicU64>,
        abandon_code: u32,
    ) -> (Self, tokio::task::JoinHandle<io::Result<()>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let pump = rt.spawn(pump_out(inner, rx, written, abandon_code));
        let chunk = chunk.max(1);
        let w = Self {
            tx,
            buf: BytesMut::with_capacity(chunk),
            chunk,
        };
        (w, pump)
    }

    fn hand_over(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = self.buf.split().freeze();
        self.tx
            .blocking_send(Out::Data(data))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the stream is closed"))?;
        // Takes the previous allocation back once the pump has let go of it.
        self.buf.reserve(self.chunk);
        Ok(())
    }

    /// Hands over what is buffered and ends the stream cleanly once it is written;
    /// drops `held` once the last byte is handed to the stream and before its end is:
    /// whatever `held` accounts for (a request slot) is free by the time the peer reads
    /// the end of the answer.
    pub(crate) fn finish_releasing(mut self, held: Box<dyn Send>) -> io::Result<()> {
        self.hand_over()?;
        self.tx
            .blocking_send(Out::Finish(held))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the stream is closed"))
    }

    /// Abandons the stream with `code` (what is still buffered is dropped).
    pub(crate) fn reset(self, code: u32) {
        let _ = self.tx.blocking_send(Out::Reset(code));
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (self.chunk - self.buf.len().min(self.chunk)).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk {
            self.hand_over()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.hand_over()
    }
}

/// Writes what a [`ChunkWriter`] hands over; resets the stream with `abandon_code` if the
/// writer goes away without finishing. A failed write ends the pump, and the writer's
/// next hand-over fails.
async fn pump_out(
    mut send: BoxSendStream,
    mut rx: mpsc::Receiver<Out>,
    written: Arc<AtomicU64>,
    abandon_code: u32,
) -> io::Result<()> {
    while let Some(out) = rx.recv().await {
        match out {
            // Copied into QUIC's own buffer: handing `b` over whole (quinn's
            // `write_chunk`) kept every 64 KiB chunk alive until its last byte was
            // acknowledged, and the provider's peak RSS for a 4 GiB blob went from 39
            // to 46 MiB for no measurable speed.
            Out::Data(b) => {
                send.write_all(&b).await?;
                written.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            Out::Finish(held) => {
                drop(held);
                return send.finish().map_err(io::Error::other);
            }
            Out::Reset(code) => {
                send.reset(code);
                return Ok(());
            }
        }
    }
    send.reset(abandon_code);
    Err(io::Error::other("the answer was abandoned"))
}

/// Writes to an async stream from a blocking thread, paced by every pacer given (one
/// per peer, one for the whole node), and counts what it wrote: each write waits for
/// its pacing, then for the stream, on the blocking thread itself. Paced answers go
/// this way rather than through a [`ChunkWriter`]: with its queue, concurrent answers
/// to one peer ran side by side and ended together, and `share.multi` lost 3-7 %.
pub(crate) struct PacedWriter<W> {
    pub(crate) inner: W,
    rt: Handle,
    pacers: Vec<Arc<Pacer>>,
    written: Arc<AtomicU64>,
}

impl<W: AsyncWrite + Unpin> PacedWriter<W> {
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

impl<W: AsyncWrite + Unpin> Write for PacedWriter<W> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    /// A send stream that records what it got and how it ended.
    #[derive(Debug, Default)]
    struct Recorded {
        bytes: Vec<u8>,
        finished: bool,
        reset: Option<u32>,
    }

    #[derive(Debug, Clone, Default)]
    struct FakeSend(Arc<Mutex<Recorded>>);

    impl tokio::io::AsyncWrite for FakeSend {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            // Small writes, so a chunk takes several.
            let n = buf.len().min(1000);
            self.0.lock().unwrap().bytes.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl kith_core::net::SendStream for FakeSend {
        fn finish(&mut self) -> Result<(), kith_core::net::StreamError> {
            self.0.lock().unwrap().finished = true;
            Ok(())
        }
        fn reset(&mut self, code: u32) {
            self.0.lock().unwrap().reset = Some(code);
        }
    }

    /// A receive stream over an in-memory pipe, read through the default
    /// `read_chunks` (which copies).
    #[derive(Debug)]
    struct FakeRecv(tokio::io::DuplexStream);

    impl tokio::io::AsyncRead for FakeRecv {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl kith_core::net::RecvStream for FakeRecv {
        fn stop(&mut self, _code: u32) {}
    }

    /// A receive buffer that counts the live ones: dropped when the last chunk cut
    /// from it is.
    struct Pinned {
        bytes: Vec<u8>,
        alive: Arc<AtomicU64>,
    }

    impl AsRef<[u8]> for Pinned {
        fn as_ref(&self) -> &[u8] {
            &self.bytes
        }
    }

    impl Drop for Pinned {
        fn drop(&mut self) {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A receive stream that hands over one-byte chunks, each cut from a 64 KiB buffer
    /// of its own (what a peer sending tiny frames would make QUIC hand over).
    #[derive(Debug)]
    struct TinyChunks {
        left: Vec<u8>,
        alive: Arc<AtomicU64>,
    }

    impl tokio::io::AsyncRead for TinyChunks {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::Error::other("read through read_chunks only")))
        }
    }

    impl kith_core::net::RecvStream for TinyChunks {
        fn stop(&mut self, _code: u32) {}

        fn read_chunks<'a>(
            &'a mut self,
            bufs: &'a mut [Bytes],
        ) -> kith_core::net::BoxFuture<'a, io::Result<Option<usize>>> {
            Box::pin(async move {
                if self.left.is_empty() {
                    return Ok(None);
                }
                let n = bufs.len().min(self.left.len());
                for (slot, byte) in bufs.iter_mut().zip(self.left.drain(..n)) {
                    let mut bytes = vec![0u8; 64 * 1024];
                    bytes[0] = byte;
                    self.alive.fetch_add(1, Ordering::SeqCst);
                    let alive = self.alive.clone();
                    *slot = Bytes::from_owner(Pinned { bytes, alive }).slice(0..1);
                }
                Ok(Some(n))
            })
        }
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_reader_yields_every_byte_in_order_then_the_end() {
        let want = data(3 * RECV_CHUNK + 12345);
        let (mut a, b) = tokio::io::duplex(8 * 1024);
        let r = ChunkReader::spawn(&Handle::current(), Box::new(FakeRecv(b)), Cancel::default());
        let reader = tokio::task::spawn_blocking(move || {
            let mut r = r;
            let mut got = Vec::new();
            r.read_to_end(&mut got).map(|_| got)
        });
        for piece in want.chunks(4099) {
            a.write_all(piece).await.unwrap();
        }
        drop(a);
        assert_eq!(reader.await.unwrap().unwrap(), want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tiny_chunks_are_copied_rather_than_pinning_their_receive_buffers() {
        let want = data(5000);
        let alive = Arc::new(AtomicU64::new(0));
        let recv = TinyChunks {
            left: want.clone(),
            alive: alive.clone(),
        };
        let r = ChunkReader::spawn(&Handle::current(), Box::new(recv), Cancel::default());
        let counter = alive.clone();
        let (midway, got) = tokio::task::spawn_blocking(move || {
            let mut r = r;
            let mut got = vec![0u8; 2500];
            r.read_exact(&mut got)?;
            // Half read: the pump has gathered what the queue holds meanwhile.
            let midway = counter.load(Ordering::SeqCst);
            r.read_to_end(&mut got)?;
            io::Result::Ok((midway, got))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, want);
        // Kept as they came, the queued one-byte chunks would each pin a 64 KiB buffer
        // (thousands of them); copied, at most one read's worth is alive at a time.
        assert!(
            midway <= READ_CHUNKS as u64,
            "{midway} receive buffers pinned midway"
        );
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_chunk_reader_fails_instead_of_ending() {
        // The writing half stays open and silent: only the cancel can end the read.
        let (_a, b) = tokio::io::duplex(1024);
        let cancel = Cancel::default();
        let r = ChunkReader::spawn(&Handle::current(), Box::new(FakeRecv(b)), cancel.clone());
        let reader = tokio::task::spawn_blocking(move || {
            let mut r = r;
            let mut buf = [0u8; 16];
            r.read(&mut buf)
        });
        cancel.cancel();
        let err = reader
            .await
            .unwrap()
            .expect_err("a cancelled read must fail");
        assert_eq!(err.to_string(), "request cancelled");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_writer_delivers_everything_then_finishes() {
        let want = data(5 * 4096 + 17);
        let send = FakeSend::default();
        let rec = send.0.clone();
        let written = Arc::new(AtomicU64::new(0));
        let (w, pump) =
            ChunkWriter::spawn(&Handle::current(), Box::new(send), 4096, written.clone(), 9);
        let body = want.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = w;
            for piece in body.chunks(1500) {
                w.write_all(piece)?;
            }
            w.finish_releasing(Box::new(()))
        })
        .await
        .unwrap()
        .unwrap();
        pump.await.unwrap().unwrap();
        let rec = rec.lock().unwrap();
        assert_eq!(rec.bytes, want);
        assert!(rec.finished && rec.reset.is_none());
        assert_eq!(written.load(Ordering::Relaxed), want.len() as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_writer_dropped_unfinished_resets_the_stream() {
        let send = FakeSend::default();
        let rec = send.0.clone();
        let (w, pump) = ChunkWriter::spawn(
            &Handle::current(),
            Box::new(send),
            4096,
            Arc::new(AtomicU64::new(0)),
            9,
        );
        tokio::task::spawn_blocking(move || {
            let mut w = w;
            w.write_all(&data(10_000)).unwrap();
            // Dropped here: an error in the middle of an answer.
        })
        .await
        .unwrap();
        assert!(pump.await.unwrap().is_err());
        let rec = rec.lock().unwrap();
        assert!(!rec.finished, "a cut answer must not look whole");
        assert_eq!(rec.reset, Some(9));
    }
}
