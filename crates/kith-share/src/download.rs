//! The download driver: connects to providers, feeds their availability and the outcome
//! of every request into the sans-IO [`Scheduler`], carries out its actions, and seeds
//! what it has verified while it downloads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kith_core::frame::{encode_frame, read_frame};
use kith_core::net::Conn;
use kith_core::{NodeAddr, NodeId};
use kith_overlay::dht::Key;
use kith_store::collection::{self, CollectionError};
use kith_store::{BlobFormat, DecodeError, GROUP_SIZE, Hash, ImportError, SizeProof, Tag};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::bridge::{Cancel, ChunkReader};
use crate::layout::Layout;
use crate::ranges::RangeSet;
use crate::scheduler::{Action, BanReason, Event, Mode, RequestId, RequestOutcome, Scheduler};
use crate::service::{Entry, Inner, Share, Update, blob_list, lock, tag_name};
use crate::ticket::Ticket;
use crate::wire::{GetRequest, MAX_FRAME, Open, Refusal, Response};
use crate::{PROTOCOL, SharedStore};

/// A provider's answer that it does not have the share.
const NOT_FOUND: &str = "the provider does not have it";

/// How long a download waits for providers that are still downloading themselves to
/// gain what it misses, before it gives up.
const GROWING_GRACE: Duration = Duration::from_secs(60);

/// Options of one download.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DownloadOptions {
    /// Providers to try besides the ticket's.
    pub providers: Vec<NodeAddr>,
    /// Piece order (default: rarest first).
    pub mode: Mode,
    /// Do not look for providers in the DHT.
    pub no_discovery: bool,
    /// Seed for the scheduler's random choices (default: from entropy).
    pub seed: Option<u64>,
}

/// Progress of a download.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Bytes verified and stored, including those held at the start.
    pub verified_bytes: u64,
    /// Bytes of the whole share.
    pub total_bytes: u64,
    /// Bytes fetched by this run.
    pub fetched_bytes: u64,
    /// Receive rate over the last second, bytes per second.
    pub rate: f64,
    /// Providers known (connected, not banned).
    pub peers_known: usize,
    /// Providers with a request in flight.
    pub peers_active: usize,
    /// Estimated time left at the current rate.
    pub eta: Option<Duration>,
    /// Bytes per second per provider, as measured by the scheduler.
    pub peer_rates: Vec<(NodeId, f64)>,
}

/// Something that happened during a download.
#[derive(Debug, Clone, PartialEq)]
pub enum DownloadEvent {
    /// The share's layout is known (after fetching a collection's manifest).
    Started {
        /// Bytes of the whole share.
        total_bytes: u64,
        /// Bytes already held from an earlier run.
        resumed_bytes: u64,
        /// Number of blobs (a collection's manifest counts).
        blobs: usize,
    },
    /// Periodic progress (every 250 ms while bytes arrive).
    Progress(Progress),
    /// A provider was connected.
    PeerConnected(NodeId),
    /// A provider was banned for this download.
    PeerBanned {
        /// The provider.
        peer: NodeId,
        /// Why.
        reason: BanReason,
    },
}

/// What a finished download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadStats {
    /// The share's root.
    pub root: Hash,
    /// Bytes of the whole share.
    pub total_bytes: u64,
    /// Bytes fetched (and verified) by this run.
    pub fetched_bytes: u64,
    /// Bytes already held at the start.
    pub resumed_bytes: u64,
    /// Verified bytes that arrived for pieces already held: second copies (endgame,
    /// requests moved off a stalled peer that delivered after all). Not in
    /// `fetched_bytes`.
    pub duplicate_bytes: u64,
    /// Bytes read from providers' streams, proofs and unfinished pieces included.
    pub received_bytes: u64,
    /// Bytes verified from each provider.
    pub per_peer: BTreeMap<NodeId, u64>,
    /// Providers banned for bad data or unreliability.
    pub banned: Vec<NodeId>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a provider could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderFailure {
    /// The provider as we knew it (addresses and relays tried).
    pub addr: NodeAddr,
    /// What went wrong.
    pub error: String,
}

impl std::fmt::Display for ProviderFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr.node_id.fmt_short())?;
        let direct: Vec<String> = self.addr.direct.iter().map(|a| a.to_string()).collect();
        let relays: Vec<String> = self
            .addr
            .relays
            .iter()
            .map(|r| format!("{}@{}", r.node_id.fmt_short(), r.addr))
            .collect();
        write!(
            f,
            " (addresses: [{}], relays: [{}]): {}",
            direct.join(", "),
            relays.join(", "),
            self.error
        )
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The ticket names no provider and discovery found none.
    #[error("no provider known for {0}: the ticket names none and discovery found none")]
    NoProviders(Hash),
    /// No provider could be reached or served the share.
    #[error("no provider could serve {root}; tried: {}", fmt_failures(.tried))]
    Unreachable {
        /// The share.
        root: Hash,
        /// Every provider tried and why it failed.
        tried: Vec<ProviderFailure>,
    },
    /// Providers were reached but none can serve the missing pieces (they lack them or
    /// were banned).
    #[error(
        "download of {root} stalled with {missing_bytes} bytes missing: no usable provider has them ({banned} banned)"
    )]
    Stalled {
        /// The share.
        root: Hash,
        /// Bytes still missing.
        missing_bytes: u64,
        /// Providers banned.
        banned: usize,
    },
    /// The collection's manifest is invalid.
    #[error("invalid collection: {0}")]
    Collection(#[from] CollectionError),
    /// The local store failed.
    #[error("local store: {0}")]
    Store(String),
    /// The download task was cancelled or panicked.
    #[error("download task ended abnormally: {0}")]
    Aborted(String),
}

fn fmt_failures(v: &[ProviderFailure]) -> String {
    if v.is_empty() {
        return "nothing".into();
    }
    v.iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A running download. Drop it to cancel.
#[derive(Debug)]
pub struct Download {
    events: mpsc::Receiver<DownloadEvent>,
    mode: mpsc::UnboundedSender<Mode>,
    task: JoinHandle<Result<DownloadStats, DownloadError>>,
}

impl Drop for Download {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Download {
    /// The next event, or `None` once the download ended.
    pub async fn next_event(&mut self) -> Option<DownloadEvent> {
        self.events.recv().await
    }

    /// Switches the piece order, for example to [`Mode::Sequential`] for a reader.
    pub fn set_mode(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }

    /// A handle that switches this download's piece order from elsewhere (several
    /// readers of one download each move its playhead).
    pub fn mode_handle(&self) -> ModeHandle {
        ModeHandle(self.mode.clone())
    }

    /// Waits for the end, discarding events not yet read.
    pub async fn finish(mut self) -> Result<DownloadStats, DownloadError> {
        self.events.close();
        let task = &mut self.task;
        match task.await {
            Ok(r) => r,
            Err(e) => Err(DownloadError::Aborted(e.to_string())),
        }
    }
}

/// Switches the piece order of a running [`Download`]; cheap to clone. Does nothing once
/// the download has ended.
#[derive(Debug, Clone)]
pub struct ModeHandle(mpsc::UnboundedSender<Mode>);

impl ModeHandle {
    /// Switches the piece order, as [`Download::set_mode`] does.
    pub fn set_mode(&self, mode: Mode) {
        let _ = self.0.send(mode);
    }

    /// Whether the download has ended (a mode sent now goes nowhere).
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

impl Share {
    /// Starts downloading what `ticket` names into the store. Providers come from the
    /// ticket, `options.providers` and (unless disabled) the DHT. Everything already
    /// verified in the store is kept, so an interrupted download resumes. While it runs
    /// the node serves what it has verified; when it ends it keeps serving (and
    /// announces) if [`ShareConfig::provide_when_done`](crate::ShareConfig) is set.
    pub fn download(&self, ticket: &Ticket, options: DownloadOptions) -> Download {
        let (ev_tx, ev_rx) = mpsc::channel(256);
        let (mode_tx, mode_rx) = mpsc::unbounded_channel();
        let mut providers = ticket.providers.clone();
        providers.extend(options.providers.iter().cloned());
        let driver = Driver::new(
            self.inner.clone(),
            ticket,
            options,
            ev_tx,
            mode_rx,
            providers,
        );
        let store = self.inner.store.clone();
        let task = tokio::spawn(async move {
            let result = driver.run().await;
            // Make what was stored durable now rather than with the store's next batch.
            let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
            if let Ok(Err(e)) = flushed {
                tracing::debug!("store flush after download failed: {e}");
            }
            result
        });
        Download {
            events: ev_rx,
            mode: mode_tx,
            task,
        }
    }

    /// Writes collection `root` from the store into a new directory `target` (it must
    /// not exist), restoring exec bits. Paths were validated when the manifest was
    /// decoded: none is absolute, contains `..` or escapes `target` (the directory is new,
    /// so no symlink in it can redirect a write).
    ///
    /// A filesystem store hands its own copy of each file over to `target` and keeps
    /// referencing it there (verified on every read), so a download leaves no second full
    /// copy; other stores copy.
    pub async fn export_dir(&self, root: Hash, target: &Path) -> Result<(), DownloadError> {
        let store = self.inner.store.clone();
        let target = target.to_owned();
        tokio::task::spawn_blocking(move || {
            collection::export_dir_with(&*store, root, &target, kith_store::ImportMode::Reference)
        })
        .await
        .map_err(|e| DownloadError::Aborted(e.to_string()))??;
        Ok(())
    }
}

/// Messages to the driver loop.
enum Msg {
    Connected {
        addr: NodeAddr,
        conn: Conn,
        updates: tokio::task::AbortHandle,
        complete: bool,
        have: Vec<(u32, RangeSet, u64)>,
    },
    Has {
        peer: NodeId,
        complete: bool,
        have: Vec<(u32, RangeSet, u64)>,
    },
    WatchEnded {
        peer: NodeId,
    },
    ConnectFailed(ProviderFailure),
    /// The provider answered that it does not have the share (yet: it may be starting a
    /// download of it itself).
    NotYet(ProviderFailure),
    Discovered(Vec<NodeAddr>),
    /// Time to ask a provider that did not have the share again.
    Retry(NodeAddr),
    DiscoveryDone,
    /// Groups of blob `index` verified and stored (in batches of up to
    /// [`PIECE_BATCH`]: one message per group woke the download per 16 KiB).
    Pieces {
        peer: NodeId,
        id: RequestId,
        index: u32,
        groups: Vec<u64>,
    },
    /// `bytes` more bytes of request `id` arrived.
    Activity {
        id: RequestId,
        bytes: u64,
    },
    End {
        peer: NodeId,
        id: RequestId,
        outcome: Option<RequestOutcome>,
        fatal: Option<String>,
    },
}

struct PeerConn {
    conn: Conn,
    /// The task reading the provider's availability updates.
    updates: tokio::task::AbortHandle,
}

impl Drop for PeerConn {
    fn drop(&mut self) {
        self.updates.abort();
    }
}

struct Driver {
    inner: Arc<Inner>,
    root: Hash,
    format: BlobFormat,
    options: DownloadOptions,
    events: mpsc::Sender<DownloadEvent>,
    mode_rx: mpsc::UnboundedReceiver<Mode>,
    /// Providers to try, in order: LAN peers first, then the ticket's, then the DHT's.
    pending_addrs: std::collections::VecDeque<NodeAddr>,
    /// Peers found on the LAN: they are asked whether they have it; a no is not a failure.
    lan: HashSet<NodeId>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    peers: HashMap<NodeId, PeerConn>,
    tried: HashSet<NodeId>,
    /// Providers that answered they do not have the share, and how often.
    not_yet: HashMap<NodeId, u32>,
    /// Providers waiting to be asked again.
    retrying: usize,
    failures: Vec<ProviderFailure>,
    connecting: usize,
    discovering: bool,
    /// Providers still downloading themselves, whose watch is open: they may gain what
    /// we miss.
    growing: HashSet<NodeId>,
    /// The provider that served what proved the layout (the root's first bytes).
    probe_peer: Option<NodeId>,
    /// Providers that sent data failing verification while the share was laid out
    /// (before the scheduler exists): banned for this download like the scheduler's.
    layout_banned: Vec<NodeId>,
    /// Availability heard before the layout was known.
    early_have: Vec<(NodeId, bool, Availability)>,
}

/// Groups held per blob index, with the blob's claimed size.
type Availability = Vec<(u32, RangeSet, u64)>;

/// The request tasks in flight, with their cancel flags.
type Inflight = HashMap<RequestId, Cancel>;

impl Driver {
    fn new(
        inner: Arc<Inner>,
        ticket: &Ticket,
        options: DownloadOptions,
        events: mpsc::Sender<DownloadEvent>,
        mode_rx: mpsc::UnboundedReceiver<Mode>,
        providers: Vec<NodeAddr>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            inner,
            root: ticket.root,
            format: ticket.format,
            options,
            events,
            mode_rx,
            pending_addrs: providers.into(),
            lan: HashSet::new(),
            tx,
            rx,
            peers: HashMap::new(),
            tried: HashSet::new(),
            not_yet: HashMap::new(),
            retrying: 0,
            failures: Vec::new(),
            connecting: 0,
            discovering: false,
            growing: HashSet::new(),
            probe_peer: None,
            layout_banned: Vec::new(),
            early_have: Vec::new(),
        }
    }

    fn collection(&self) -> bool {
        self.format == BlobFormat::Collection
    }

    /// Starts connecting to providers not tried yet, up to the per-download limit.
    fn connect_more(&mut self) {
        let me = self.inner.transport.local_id();
        while self.peers.len() + self.connecting < self.inner.config.max_peers_per_download {
            let Some(addr) = self.pending_addrs.pop_front() else {
                break;
            };
            if addr.node_id == me || !self.tried.insert(addr.node_id) {
                continue;
            }
            self.connecting += 1;
            let inner = self.inner.clone();
            let tx = self.tx.clone();
            let (root, collection) = (self.root, self.collection());
            tokio::spawn(async move {
                let timeout = inner.config.connect_timeout;
                let r = tokio::time::timeout(
                    timeout,
                    watch(inner, addr.clone(), root, collection, tx.clone()),
                )
                .await;
                let error = match r {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) if e == NOT_FOUND => {
                        let _ = tx.send(Msg::NotYet(ProviderFailure { addr, error: e }));
                        return;
                    }
                    Ok(Err(e)) => e,
                    Err(_) => format!("no answer within {timeout:?}"),
                };
                let _ = tx.send(Msg::ConnectFailed(ProviderFailure { addr, error }));
            });
        }
    }

    fn start_discovery(&mut self) {
        if self.options.no_discovery || self.discovering {
            return;
        }
        let Some(dht) = self.inner.dht.clone() else {
            return;
        };
        self.discovering = true;
        let tx = self.tx.clone();
        let key = Key(*self.root.as_bytes());
        tokio::spawn(async move {
            match dht.find_providers(key).await {
                Ok(v) => {
                    let _ = tx.send(Msg::Discovered(v));
                }
                Err(e) => tracing::debug!("provider lookup failed: {e}"),
            }
            let _ = tx.send(Msg::DiscoveryDone);
        });
    }

    fn handle_conn_msg(&mut self, msg: Msg) -> Option<Msg> {
        match msg {
            Msg::Connected {
                addr,
                conn,
                updates,
                complete,
                have,
            } => {
                self.connecting = self.connecting.saturating_sub(1);
                let id = addr.node_id;
                self.peers.insert(id, PeerConn { conn, updates });
                if !complete {
                    self.growing.insert(id);
                }
                let _ = self.events.try_send(DownloadEvent::PeerConnected(id));
                self.early_have.push((id, complete, have));
                None
            }
            Msg::NotYet(f) if self.not_yet.get(&f.addr.node_id).copied().unwrap_or(0) < 4 => {
                // Asked again later (0.5, 1, 2, 4 s): a peer named in a ticket or found in
                // the DHT may be registering the share right now.
                self.connecting = self.connecting.saturating_sub(1);
                let n = self.not_yet.entry(f.addr.node_id).or_insert(0);
                let delay = Duration::from_millis(500) * (1 << *n);
                *n += 1;
                self.tried.remove(&f.addr.node_id);
                self.retrying += 1;
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(Msg::Retry(f.addr));
                });
                None
            }
            Msg::Retry(addr) => {
                self.retrying = self.retrying.saturating_sub(1);
                self.pending_addrs.push_back(addr);
                self.connect_more();
                None
            }
            Msg::ConnectFailed(f) | Msg::NotYet(f) => {
                self.connecting = self.connecting.saturating_sub(1);
                tracing::debug!("provider failed: {f}");
                if !self.lan.contains(&f.addr.node_id) {
                    self.failures.push(f);
                }
                self.connect_more();
                None
            }
            Msg::Discovered(v) => {
                self.pending_addrs.extend(v);
                self.connect_more();
                None
            }
            Msg::DiscoveryDone => {
                self.discovering = false;
                None
            }
            other => Some(other),
        }
    }

    /// Nothing more can be tried: no connection pending or to be retried, no discovery
    /// running.
    fn exhausted(&self) -> bool {
        self.connecting == 0
            && self.retrying == 0
            && !self.discovering
            && self.pending_addrs.is_empty()
    }

    async fn run(mut self) -> Result<DownloadStats, DownloadError> {
        let started = Instant::now();
        let lan_source = lock(&self.inner.lan_peers).clone();
        if let Some(lan) = lan_source {
            let mut peers = lan();
            peers.truncate(self.inner.config.max_peers_per_download);
            for p in peers.into_iter().rev() {
                self.lan.insert(p.node_id);
                self.pending_addrs.push_front(p);
            }
        }
        self.start_discovery();
        self.connect_more();
        if self.pending_addrs.is_empty() && self.connecting == 0 && !self.discovering {
            return Err(DownloadError::NoProviders(self.root));
        }
        // 1. Lay out the share: fetch what is needed to know every blob's size.
        let root_had = self.held_bytes(self.root)?;
        let layout = self.resolve_layout().await?;
        let probe_bytes = self.held_bytes(self.root)?.saturating_sub(root_had);
        let hashes = {
            let store = self.inner.store.clone();
            let (root, format) = (self.root, self.format);
            tokio::task::spawn_blocking(move || blob_list(&*store, root, format, false))
                .await
                .map_err(|e| DownloadError::Aborted(e.to_string()))?
                .map_err(|e| DownloadError::Store(e.to_string()))?
        };
        let layout = Layout::new(layout);
        // 2. What is here already.
        let mut have = RangeSet::new();
        for (k, h) in hashes.iter().enumerate() {
            if let Some(s) = self
                .inner
                .store
                .status(*h)
                .map_err(|e| DownloadError::Store(e.to_string()))?
            {
                let base = layout.blob_pieces(k).start;
                for r in s.bitfield.ranges() {
                    have.insert_range(base + r.start..base + r.end);
                }
            }
        }
        let seed = self.options.seed.unwrap_or_else(rand::random);
        let mut sched: Scheduler<NodeId> = Scheduler::new(
            layout.clone(),
            &have,
            self.inner.config.scheduler.clone(),
            seed,
        );
        let resumed_bytes = sched.verified_bytes().saturating_sub(probe_bytes);
        let _ = self.events.try_send(DownloadEvent::Started {
            total_bytes: layout.total_bytes(),
            resumed_bytes,
            blobs: layout.blobs(),
        });
        // Seed while downloading, and say so in the DHT at once: peers that start later
        // find this one while it is still fetching (the watch protocol tells them what
        // it has so far).
        if self.inner.entry(&self.root).is_none() {
            self.inner.register(
                self.root,
                Entry {
                    collection: self.collection(),
                    blobs: Arc::new(hashes.clone()),
                    complete: false,
                },
            );
            if self.inner.config.provide_when_done {
                let (inner, root) = (self.inner.clone(), self.root);
                tokio::spawn(async move {
                    if let Err(e) = inner.announce(root).await {
                        tracing::debug!(%root, "early provider announcement failed: {e}");
                    }
                });
            }
        }
        // Providers that announce after this download started are found by asking the
        // DHT again: after 0.5 s, then at doubling intervals up to 16 s.
        let mut rediscover_every = Duration::from_millis(500);
        let mut rediscover_at = Instant::now() + rediscover_every;
        let now = Instant::now();
        sched.set_mode(now, self.options.mode);
        for (peer, complete, have) in std::mem::take(&mut self.early_have) {
            self.add_peer(&mut sched, &layout, peer, complete, have);
        }
        // 3. The loop.
        let mut inflight: Inflight = HashMap::new();
        let mut per_peer: BTreeMap<NodeId, u64> = BTreeMap::new();
        if let (Some(p), true) = (self.probe_peer, probe_bytes > 0) {
            per_peer.insert(p, probe_bytes);
        }
        let mut fetched = probe_bytes;
        let (mut duplicate, mut received) = (0u64, probe_bytes);
        let mut window: Vec<(Instant, u64)> = Vec::new();
        let mut pending_updates: BTreeMap<u32, RangeSet> = BTreeMap::new();
        let mut stuck_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.carry_out(&mut sched, &layout, &hashes, &mut inflight);
            while let Some(ev) = sched.poll_event() {
                match ev {
                    Event::Piece { peer, bytes, piece } => {
                        fetched += bytes;
                        *per_peer.entry(peer).or_default() += bytes;
                        window.push((Instant::now(), bytes));
                        if let Some((blob, group)) = layout.locate(piece) {
                            pending_updates
                                .entry(blob as u32)
                                .or_default()
                                .insert(group);
                        }
                    }
                    Event::Banned { peer, reason } => {
                        tracing::info!(peer = %peer.fmt_short(), ?reason, "provider banned");
                        let _ = self
                            .events
                            .try_send(DownloadEvent::PeerBanned { peer, reason });
                        self.peers.remove(&peer);
                    }
                    Event::Stalled { peer } => {
                        tracing::debug!(peer = %peer.fmt_short(), "request stalled");
                    }
                    Event::Done => {}
                }
            }
            if sched.is_done() {
                break;
            }
            let stuck = sched.is_stuck() && self.exhausted();
            if !stuck {
                stuck_since = None;
            }
            let waited = if stuck {
                stuck_since.get_or_insert_with(Instant::now).elapsed()
            } else {
                Duration::ZERO
            };
            // Providers that are still downloading may yet bring what is missing.
            if stuck && (self.growing.is_empty() || waited >= GROWING_GRACE) {
                if sched.peer_count() == 0 && sched.banned().count() == 0 {
                    return Err(DownloadError::Unreachable {
                        root: self.root,
                        tried: std::mem::take(&mut self.failures),
                    });
                }
                return Err(DownloadError::Stalled {
                    root: self.root,
                    missing_bytes: layout.total_bytes().saturating_sub(sched.verified_bytes()),
                    banned: sched.banned().count(),
                });
            }
            if sched.is_stuck() && !self.discovering && self.connecting == 0 {
                self.connect_more();
            }
            let grace = stuck_since.map(|t| t + GROWING_GRACE);
            let deadline = match (sched.poll_timeout(), grace) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                Some(msg) = self.rx.recv() => {
                    let Some(msg) = self.handle_conn_msg(msg) else {
                        for (peer, complete, have) in std::mem::take(&mut self.early_have) {
                            self.add_peer(&mut sched, &layout, peer, complete, have);
                        }
                        continue;
                    };
                    let now = Instant::now();
                    match msg {
                        Msg::Has { peer, complete, have } => {
                            if complete {
                                self.growing.remove(&peer);
                            }
                            self.add_peer(&mut sched, &layout, peer, complete, have);
                        }
                        Msg::WatchEnded { peer } => {
                            self.growing.remove(&peer);
                            // A complete provider ends its watch at once; only a closed
                            // connection takes the peer away.
                            if let Some(p) = self.peers.get(&peer) {
                                if p.conn.closed_now() {
                                    self.peers.remove(&peer);
                                    sched.remove_peer(now, &peer);
                                }
                            }
                        }
                        Msg::Activity { id, bytes } => {
                            received += bytes;
                            sched.handle_activity(now, id, bytes);
                        }
                        Msg::Pieces { peer, id, index, groups } => {
                            let first = layout.blob_pieces(index as usize).start;
                            for group in groups {
                                let piece = first + group;
                                if sched.has_piece(piece) {
                                    duplicate += layout.piece_bytes(piece);
                                }
                                sched.handle_piece(now, &peer, id, piece);
                            }
                        }
                        Msg::End { peer, id, outcome, fatal } => {
                            inflight.remove(&id);
                            if let Some(e) = fatal {
                                return Err(DownloadError::Store(e));
                            }
                            if let Some(o) = outcome {
                                sched.handle_request_end(now, id, o);
                                if o == RequestOutcome::BadData {
                                    // Also when the request had been cancelled meanwhile.
                                    sched.handle_bad_data(&peer);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                _ = sleep_until(deadline) => {
                    sched.handle_timeout(Instant::now());
                }
                Some(mode) = self.mode_rx.recv() => {
                    sched.set_mode(Instant::now(), mode);
                }
                _ = tick.tick() => {
                    self.publish(&hashes, &layout, &mut pending_updates, false);
                    let now = Instant::now();
                    if now >= rediscover_at {
                        rediscover_every = (rediscover_every * 2).min(Duration::from_secs(16));
                        rediscover_at = now + rediscover_every;
                        if self.peers.len() + self.connecting
                            < self.inner.config.max_peers_per_download
                        {
                            self.start_discovery();
                        }
                    }
                    window.retain(|(t, _)| now.duration_since(*t) < Duration::from_secs(1));
                    let rate: f64 = window.iter().map(|(_, b)| *b as f64).sum();
                    let left = layout.total_bytes().saturating_sub(sched.verified_bytes());
                    let eta = (rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / rate));
                    let _ = self.events.try_send(DownloadEvent::Progress(Progress {
                        verified_bytes: sched.verified_bytes(),
                        total_bytes: layout.total_bytes(),
                        fetched_bytes: fetched,
                        rate,
                        peers_known: sched.peer_count(),
                        peers_active: sched.active_peers(),
                        eta,
                        peer_rates: sched.peers().map(|(p, s)| (p, s.rate)).collect(),
                    }));
                }
            }
        }
        for c in inflight.values() {
            c.cancel();
        }
        // Done: pin it, mark it complete for watchers, announce.
        self.publish(&hashes, &layout, &mut pending_updates, true);
        self.inner
            .store
            .set_tag(
                &tag_name(&self.root),
                Tag {
                    hash: self.root,
                    format: self.format,
                },
            )
            .map_err(|e| DownloadError::Store(e.to_string()))?;
        if self.inner.config.provide_when_done {
            if let Some(e) = lock(&self.inner.registry).get_mut(&self.root) {
                e.complete = true;
            }
            if let Err(e) = self.inner.announce(self.root).await {
                tracing::debug!(root = %self.root, "provider announcement failed: {e}");
            }
        } else {
            lock(&self.inner.registry).remove(&self.root);
        }
        let _ = self.events.try_send(DownloadEvent::Progress(Progress {
            verified_bytes: layout.total_bytes(),
            total_bytes: layout.total_bytes(),
            fetched_bytes: fetched,
            rate: 0.0,
            peers_known: sched.peer_count(),
            peers_active: 0,
            eta: Some(Duration::ZERO),
            peer_rates: Vec::new(),
        }));
        tracing::debug!(
            root = %self.root,
            fetched,
            duplicate,
            received,
            peers = per_peer.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "download complete"
        );
        Ok(DownloadStats {
            root: self.root,
            total_bytes: layout.total_bytes(),
            fetched_bytes: fetched,
            resumed_bytes,
            duplicate_bytes: duplicate,
            received_bytes: received,
            per_peer,
            banned: sched
                .banned()
                .copied()
                .chain(self.layout_banned.iter().copied())
                .collect(),
            elapsed: started.elapsed(),
        })
    }

    /// Bytes of blob `hash` verified in the store.
    fn held_bytes(&self, hash: Hash) -> Result<u64, DownloadError> {
        let status = self
            .inner
            .store
            .status(hash)
            .map_err(|e| DownloadError::Store(e.to_string()))?;
        Ok(status.map_or(0, |s| {
            let layout = Layout::new(vec![s.size]);
            s.bitfield
                .ranges()
                .iter()
                .flat_map(|r| r.clone())
                .map(|p| layout.piece_bytes(p))
                .sum()
        }))
    }

    /// Tells watchers what was verified since the last call.
    fn publish(
        &self,
        hashes: &[Hash],
        layout: &Layout,
        pending: &mut BTreeMap<u32, RangeSet>,
        complete: bool,
    ) {
        let _ = hashes;
        for (index, groups) in std::mem::take(pending) {
            let _ = self.inner.updates.send(Update {
                root: self.root,
                index,
                size: layout.blob_size(index as usize),
                groups,
                complete: false,
            });
        }
        if complete {
            let _ = self.inner.updates.send(Update {
                root: self.root,
                index: 0,
                size: 0,
                groups: RangeSet::new(),
                complete: true,
            });
        }
    }

    fn add_peer(
        &mut self,
        sched: &mut Scheduler<NodeId>,
        layout: &Layout,
        peer: NodeId,
        complete: bool,
        have: Vec<(u32, RangeSet, u64)>,
    ) {
        let now = Instant::now();
        let Some(pc) = self.peers.get(&peer) else {
            return;
        };
        sched.add_peer(now, peer, pc.conn.rtt());
        if complete {
            sched.peer_has_all(now, &peer);
            return;
        }
        let mut set = RangeSet::new();
        for (index, groups, _) in have {
            let base = layout.blob_pieces(index as usize);
            for r in groups.ranges() {
                let s = base.start.saturating_add(r.start).min(base.end);
                let e = base.start.saturating_add(r.end).min(base.end);
                set.insert_range(s..e);
            }
        }
        sched.peer_has(now, &peer, &set);
    }

    /// Carries out the scheduler's actions.
    fn carry_out(
        &mut self,
        sched: &mut Scheduler<NodeId>,
        layout: &Layout,
        hashes: &[Hash],
        inflight: &mut Inflight,
    ) {
        while let Some(a) = sched.poll_action() {
            match a {
                Action::Request { peer, id, pieces } => {
                    let Some(pc) = self.peers.get(&peer) else {
                        let _ = self.tx.send(Msg::End {
                            peer,
                            id,
                            outcome: Some(RequestOutcome::Failed),
                            fatal: None,
                        });
                        continue;
                    };
                    let blobs: Vec<(u32, Hash, std::ops::Range<u64>, u64)> = layout
                        .split(pieces)
                        .into_iter()
                        .map(|(b, g)| (b as u32, hashes[b], g, layout.blob_size(b)))
                        .collect();
                    let cancel = Cancel::default();
                    inflight.insert(id, cancel.clone());
                    let job = RequestJob {
                        conn: pc.conn.clone(),
                        store: self.inner.store.clone(),
                        root: self.root,
                        collection: self.collection(),
                        blobs,
                        cancel,
                        report: Some((self.tx.clone(), peer, id)),
                    };
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let r = job.run().await;
                        let (outcome, fatal) = match r {
                            Ok(o) => (Some(o), None),
                            Err(JobError::Cancelled) => (None, None),
                            Err(JobError::Fatal(e)) => (None, Some(e)),
                        };
                        let _ = tx.send(Msg::End {
                            peer,
                            id,
                            outcome,
                            fatal,
                        });
                    });
                }
                Action::Cancel { id, .. } => {
                    if let Some(c) = inflight.remove(&id) {
                        c.cancel();
                    }
                }
            }
        }
    }

    /// Learns every blob's size: from the store, or by fetching what proves it (the
    /// first group of a raw blob; the whole manifest of a collection).
    async fn resolve_layout(&mut self) -> Result<Vec<u64>, DownloadError> {
        let root_size = self
            .fetch_whole_or_size(self.root, self.collection())
            .await?;
        if !self.collection() {
            return Ok(vec![root_size]);
        }
        let store = self.inner.store.clone();
        let root = self.root;
        let m = tokio::task::spawn_blocking(move || collection::read_manifest(&*store, root))
            .await
            .map_err(|e| DownloadError::Aborted(e.to_string()))??;
        let mut sizes = vec![root_size];
        sizes.extend(m.entries.iter().map(|e| e.size));
        Ok(sizes)
    }

    /// For blob 0: makes sure its size is verified locally (and, with `whole`, that it
    /// is complete), asking connected providers in turn. Returns its size.
    async fn fetch_whole_or_size(&mut self, hash: Hash, whole: bool) -> Result<u64, DownloadError> {
        let mut stuck_since: Option<Instant> = None;
        loop {
            let status = self
                .inner
                .store
                .status(hash)
                .map_err(|e| DownloadError::Store(e.to_string()))?;
            let want = match &status {
                Some(s) if s.bitfield.is_complete() => return Ok(s.size),
                Some(s) if !whole => return Ok(s.size),
                Some(s) => {
                    let all = RangeSet::from_range(0..kith_store::group_count(s.size));
                    all.difference(&RangeSet::from(&s.bitfield))
                }
                None => RangeSet::from_range(0..1),
            };
            // A provider to ask: any connected one that may have it, and a group it has
            // (any group proves the size: the encoding carries the size proof).
            let candidate = self
                .early_have
                .iter()
                .filter(|(p, _, _)| self.peers.contains_key(p))
                .find_map(|(p, complete, have)| {
                    if *complete {
                        return Some((*p, None));
                    }
                    have.iter()
                        .find(|(i, g, _)| *i == 0 && !g.is_empty())
                        .and_then(|(_, g, _)| g.ranges().first().map(|r| (*p, Some(r.start))))
                });
            let Some((peer, first_group)) = candidate else {
                // Providers still downloading themselves may yet gain it.
                let waited = stuck_since.get_or_insert_with(Instant::now).elapsed();
                let growing = !self.growing.is_empty() && waited < GROWING_GRACE;
                if self.exhausted() && !growing {
                    if self.peers.is_empty() {
                        return Err(DownloadError::Unreachable {
                            root: self.root,
                            tried: std::mem::take(&mut self.failures),
                        });
                    }
                    return Err(DownloadError::Stalled {
                        root: self.root,
                        missing_bytes: status.map_or(0, |s| s.size),
                        banned: 0,
                    });
                }
                let msg = if self.exhausted() {
                    let left = GROWING_GRACE.saturating_sub(waited);
                    match tokio::time::timeout(left, self.rx.recv()).await {
                        Ok(m) => m,
                        Err(_) => continue,
                    }
                } else {
                    self.rx.recv().await
                };
                let Some(msg) = msg else {
                    return Err(DownloadError::Aborted("channel closed".into()));
                };
                if let Some(Msg::Has {
                    peer,
                    complete,
                    have,
                }) = self.handle_conn_msg(msg)
                {
                    self.early_have.push((peer, complete, have));
                }
                continue;
            };
            let Some(pc) = self.peers.get(&peer) else {
                continue;
            };
            // Ask for the groups still missing (or the first group, to learn the size);
            // the size is proven by the encoding.
            let groups = match (&status, first_group) {
                (None, Some(g)) => g..g + 1,
                _ => want.ranges().first().cloned().unwrap_or(0..1),
            };
            let size_hint = status.map_or(u64::MAX, |s| s.size);
            let job = RequestJob {
                conn: pc.conn.clone(),
                store: self.inner.store.clone(),
                root: self.root,
                collection: self.collection(),
                blobs: vec![(0, hash, groups, size_hint)],
                cancel: Cancel::default(),
                report: None,
            };
            let timeout = self
                .inner
                .config
                .connect_timeout
                .max(Duration::from_secs(10));
            let r = tokio::time::timeout(timeout, job.run()).await;
            match r {
                Ok(Ok(RequestOutcome::Finished)) => {
                    self.probe_peer = Some(peer);
                    continue;
                }
                Ok(Err(JobError::Fatal(e))) => return Err(DownloadError::Store(e)),
                other => {
                    tracing::debug!(peer = %peer.fmt_short(), "fetching the root failed: {other:?}");
                    if matches!(other, Ok(Ok(RequestOutcome::BadData))) {
                        self.layout_banned.push(peer);
                        let _ = self.events.try_send(DownloadEvent::PeerBanned {
                            peer,
                            reason: crate::scheduler::BanReason::BadData,
                        });
                    }
                    self.early_have.retain(|(p, _, _)| *p != peer);
                    self.peers.remove(&peer);
                    self.failures.push(ProviderFailure {
                        addr: NodeAddr::new(peer),
                        error: format!("could not serve the root blob: {other:?}"),
                    });
                    self.connect_more();
                }
            }
        }
    }
}

trait ConnExt {
    fn closed_now(&self) -> bool;
}

impl ConnExt for Conn {
    fn closed_now(&self) -> bool {
        crate::bridge::now_or_never(self.closed()).is_some()
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Connects to a provider, opens a watch, reports its availability and then its
/// updates until the stream ends.
async fn watch(
    inner: Arc<Inner>,
    addr: NodeAddr,
    root: Hash,
    collection: bool,
    tx: mpsc::UnboundedSender<Msg>,
) -> Result<(), String> {
    let conn = inner
        .transport
        .connect(addr.clone())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // A busy provider (all slots taken, or requests of an earlier connection of ours
    // still counted, as after a restart) is asked again with backoff; the caller's
    // connect timeout bounds the whole.
    let max_ranges = crate::ranges::MAX_WIRE_RANGES;
    let mut backoff = Duration::from_millis(100);
    let (send, mut recv, complete, have) = loop {
        let (mut send, recv) = conn
            .open_bi(&PROTOCOL)
            .await
            .map_err(|e| format!("open stream: {e}"))?;
        let open = Open::Watch { root, collection };
        let frame = encode_frame(&open.to_msg(), MAX_FRAME).map_err(|e| e.to_string())?;
        send.write_all(&frame)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut recv = BufReader::new(recv);
        let first = read_frame(&mut recv, MAX_FRAME)
            .await
            .map_err(|e| format!("read: {e}"))?
            .ok_or("the provider closed the stream without an answer")?;
        match Response::decode(&first, max_ranges).map_err(|e| e.to_string())? {
            Response::Availability { complete, blobs } => break (send, recv, complete, blobs),
            Response::Refused(Refusal::NotFound) => return Err(NOT_FOUND.into()),
            Response::Refused(Refusal::Busy { retry_after_ms }) => {
                tokio::time::sleep(Duration::from_millis(
                    u64::from(retry_after_ms).clamp(50, 5000),
                ))
                .await;
            }
            Response::Refused(Refusal::TooManyRequests) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Response::Refused(r) => return Err(format!("refused: {r:?}")),
            Response::Blob { .. } => {
                return Err("protocol violation: blob header on a watch".into());
            }
        }
    };
    let peer = addr.node_id;
    let (start_tx, start_rx) = tokio::sync::oneshot::channel::<()>();
    let tx2 = tx.clone();
    // Updates until the end; the send side stays open so the provider keeps going.
    let task = tokio::spawn(async move {
        let tx = tx2;
        if start_rx.await.is_err() {
            return;
        }
        let _send = send;
        while let Ok(Some(f)) = read_frame(&mut recv, MAX_FRAME).await {
            let Ok(Response::Availability { complete, blobs }) = Response::decode(&f, max_ranges)
            else {
                break;
            };
            let has = Msg::Has {
                peer,
                complete,
                have: blobs,
            };
            if tx.send(has).is_err() {
                break;
            }
        }
        let _ = tx.send(Msg::WatchEnded { peer });
    });
    let _ = tx.send(Msg::Connected {
        addr,
        conn: conn.clone(),
        updates: task.abort_handle(),
        complete,
        have,
    });
    let _ = start_tx.send(());
    Ok(())
}

#[derive(Debug)]
enum JobError {
    Cancelled,
    Fatal(String),
}

/// One get request to one provider.
struct RequestJob {
    conn: Conn,
    store: SharedStore,
    root: Hash,
    collection: bool,
    /// `(index, hash, groups, blob size or u64::MAX if unknown)`.
    blobs: Vec<(u32, Hash, std::ops::Range<u64>, u64)>,
    cancel: Cancel,
    report: Option<(mpsc::UnboundedSender<Msg>, NodeId, RequestId)>,
}

impl RequestJob {
    async fn run(self) -> Result<RequestOutcome, JobError> {
        // A blob we hold part of has its size verified: it needs no size proof.
        let held: Vec<u64> = self
            .blobs
            .iter()
            .map(|(_, hash, _, _)| match self.store.status(*hash) {
                Ok(Some(s)) if s.size > 0 => s.size,
                _ => 0,
            })
            .collect();
        let req = Open::Get(GetRequest {
            root: self.root,
            collection: self.collection,
            blobs: self
                .blobs
                .iter()
                .zip(&held)
                .map(|((i, _, g, _), held)| (*i, RangeSet::from_range(g.clone()), *held))
                .collect(),
        });
        let rid = self.report.as_ref().map(|r| r.2);
        tracing::trace!(?rid, blobs = self.blobs.len(), "request: opening a stream");
        let Ok((mut send, recv)) = self.conn.open_bi(&PROTOCOL).await else {
            return Ok(RequestOutcome::Failed);
        };
        tracing::trace!(?rid, "request: stream open");
        let Ok(frame) = encode_frame(&req.to_msg(), MAX_FRAME) else {
            return Ok(RequestOutcome::Failed);
        };
        if send.write_all(&frame).await.is_err() || send.finish().is_err() {
            return Ok(RequestOutcome::Failed);
        }
        // The whole answer is read on one blocking thread, headers and encodings alike
        // (a hop per request, not per blob), from chunks a pump task reads off the
        // stream (the threads meet once per chunk, not once per packet).
        let rt = tokio::runtime::Handle::current();
        let cancel = self.cancel.clone();
        let store = self.store.clone();
        let report = self.report;
        let blobs = self.blobs;
        let mut r = ChunkReader::spawn(&rt, recv, cancel.clone());
        if let Some((tx, _, id)) = report.clone() {
            let mut last = 0u64;
            r = r.with_activity(Box::new(move |total| {
                let bytes = total.saturating_sub(last);
                last = total;
                let _ = tx.send(Msg::Activity { id, bytes });
            }));
        }
        let joined = tokio::task::spawn_blocking(move || {
            let cancelled = || cancel.is_cancelled();
            for ((index, hash, groups, size), held) in blobs.into_iter().zip(held) {
                let frame = match read_header(&mut r) {
                    Ok(Some(f)) => f,
                    _ if cancelled() => return Err(JobError::Cancelled),
                    _ => return Ok(RequestOutcome::Failed),
                };
                tracing::trace!(?rid, index, "request: blob header");
                match Response::decode(&frame, 16) {
                    Ok(Response::Refused(r)) => {
                        return Ok(match r {
                            Refusal::NotFound => RequestOutcome::NotFound,
                            Refusal::Busy { retry_after_ms } => RequestOutcome::Busy {
                                retry_after: Duration::from_millis(u64::from(retry_after_ms)),
                            },
                            Refusal::TooManyRequests => RequestOutcome::Busy {
                                retry_after: Duration::from_millis(200),
                            },
                            Refusal::TooLarge | Refusal::BadRequest => RequestOutcome::Failed,
                        });
                    }
                    Ok(Response::Blob { index: i, missing }) if i == index => {
                        if missing {
                            return Ok(RequestOutcome::Missing);
                        }
                    }
                    // A header for another blob, an availability frame, garbage: the
                    // peer breaks the protocol.
                    _ => return Ok(RequestOutcome::BadData),
                }
                let bytes =
                    groups.start * GROUP_SIZE..groups.end.saturating_mul(GROUP_SIZE).min(size);
                let proof = if held == 0 {
                    SizeProof::Included
                } else {
                    SizeProof::Omitted
                };
                let mut stored = Vec::new();
                let report_pieces = |groups: &mut Vec<u64>| {
                    if let (Some((tx, peer, id)), false) = (&report, groups.is_empty()) {
                        let _ = tx.send(Msg::Pieces {
                            peer: *peer,
                            id: *id,
                            index,
                            groups: std::mem::take(groups),
                        });
                    }
                };
                let mut first_at = Instant::now();
                let res = store.import_verified_with(hash, bytes, proof, &mut r, &mut |g| {
                    if stored.is_empty() {
                        first_at = Instant::now();
                    }
                    stored.push(g);
                    if stored.len() >= PIECE_BATCH || first_at.elapsed() >= PIECE_WAIT {
                        report_pieces(&mut stored);
                    }
                });
                // What verified before an error counts all the same.
                report_pieces(&mut stored);
                tracing::trace!(?rid, index, ok = res.is_ok(), "request: blob imported");
                match res {
                    Ok(_) => {}
                    // A cut stream (our cancel does that too), or the blob was deleted
                    // from our store meanwhile.
                    Err(
                        ImportError::Decode(DecodeError::Truncated | DecodeError::Io(_))
                        | ImportError::SizeUnknown(_),
                    ) => {
                        if cancelled() {
                            return Err(JobError::Cancelled);
                        }
                        return Ok(RequestOutcome::Failed);
                    }
                    // Bytes that failed verification: reported even when the request was
                    // cancelled meanwhile, so the peer is banned all the same.
                    Err(ImportError::Decode(_) | ImportError::SizeConflict { .. }) => {
                        return Ok(RequestOutcome::BadData);
                    }
                    Err(_) if cancelled() => return Err(JobError::Cancelled),
                    Err(e) => return Err(JobError::Fatal(e.to_string())),
                }
            }
            Ok(RequestOutcome::Finished)
        })
        .await;
        joined.map_err(|e| JobError::Fatal(e.to_string()))?
    }
}

/// Groups reported to the download at once by a request (256 KiB, one store run, or
/// fewer after [`PIECE_WAIT`]): many enough that a fast download's task is not woken
/// per group.
const PIECE_BATCH: usize = 16;

/// A batch is reported early once its first piece waited this long: on a slow stream a
/// full batch would hold back what the scheduler counts to keep the pipeline full.
const PIECE_WAIT: Duration = Duration::from_millis(1);

/// The longest header frame a get answer holds (a blob header or a refusal: a few
/// bytes); anything longer breaks the protocol.
const MAX_HEADER: usize = 64;

/// Reads one header frame of a get answer from a blocking reader. `Ok(None)` on a clean
/// end of stream; an error for a cut stream or a frame over [`MAX_HEADER`].
fn read_header(
    r: &mut impl std::io::Read,
) -> Result<Option<bytes::Bytes>, kith_core::frame::FrameError> {
    kith_core::frame::read_frame_blocking(r, MAX_HEADER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> proptest::test_runner::Config {
        proptest::test_runner::Config {
            cases: 512,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x6864_7231),
            failure_persistence: None,
            ..Default::default()
        }
    }

    #[test]
    fn headers_read_back_and_long_ones_are_refused() {
        for r in [
            Response::Blob {
                index: u32::MAX,
                missing: true,
            },
            Response::Refused(Refusal::Busy {
                retry_after_ms: u32::MAX,
            }),
        ] {
            let frame = encode_frame(&r.to_msg(), MAX_FRAME).unwrap();
            let mut rd = &frame[..];
            let body = read_header(&mut rd).unwrap().unwrap();
            assert_eq!(Response::decode(&body, 16).unwrap(), r);
            assert!(rd.is_empty());
        }
        assert!(read_header(&mut &[][..]).unwrap().is_none());
        // 65 bytes announced: refused before reading (or allocating) them.
        assert!(read_header(&mut &[65u8, 0, 0][..]).is_err());
        assert!(read_header(&mut &[0x80u8, 0x80, 0x80, 0x01][..]).is_err());
        assert!(read_header(&mut &[3u8, 1][..]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(config())]

        #[test]
        fn garbage_headers_never_panic_or_exceed_the_cap(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)
        ) {
            if let Ok(Some(body)) = read_header(&mut &bytes[..]) {
                proptest::prop_assert!(body.len() <= MAX_HEADER);
            }
        }
    }
}
