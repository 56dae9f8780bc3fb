//! The sites service: publish, resolve, follow and pin sites.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kith_core::{NodeAddr, SecretKey};
use kith_overlay::dht::{DhtError, DhtHandle, GetError, Limits, Record};
use kith_overlay::gossip::Event;
use kith_overlay::gossip::driver::{Gossip, Topic};
use kith_share::{
    DownloadError, DownloadOptions, Layout, Mode, ModeHandle, Share, ShareError, Ticket,
};
use kith_store::collection::{self, Entry, Manifest};
use kith_store::{BlobFormat, GROUP_SIZE};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::record::{SiteName, SiteRecord, SiteRecordError};

/// Settings of [`Sites`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SitesConfig {
    /// How often a followed site's DHT record is read again, for updates that missed
    /// the gossip topic (default 60 s).
    pub refresh: Duration,
    /// How long resolving a name in the DHT may take (default 20 s).
    pub resolve_timeout: Duration,
    /// How long fetching a version's manifest may take before the version is given up
    /// (default 30 s).
    pub manifest_timeout: Duration,
    /// Sites followed at once; opening one more drops the least recently used site that
    /// is neither pinned nor published here (default 64).
    pub max_followed: usize,
    /// Size caps of the signed records (the DHT's defaults).
    pub limits: Limits,
}

impl Default for SitesConfig {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(60),
            resolve_timeout: Duration::from_secs(20),
            manifest_timeout: Duration::from_secs(30),
            max_followed: 64,
            limits: Limits::default(),
        }
    }
}

/// Why a site could not be opened, pinned or resolved.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No record of the site was found in the DHT.
    #[error("no record of site {0} was found")]
    NotFound(SiteName),
    /// The record found is invalid.
    #[error("the record of site {0} is invalid: {1}")]
    Invalid(SiteName, SiteRecordError),
    /// The DHT failed.
    #[error("DHT: {0}")]
    Dht(String),
    /// Resolving or fetching took longer than configured.
    #[error("site {0}: timed out {1}")]
    Timeout(SiteName, &'static str),
    /// The site's content could not be fetched.
    #[error("site {0}: {1}")]
    Fetch(SiteName, String),
    /// The service stopped.
    #[error("the sites service stopped")]
    Stopped,
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// Importing the folder failed.
    #[error("importing the site: {0}")]
    Import(#[from] ShareError),
    /// Signing the record failed (a size cap).
    #[error("signing the record: {0}")]
    Record(#[from] SiteRecordError),
    /// The service stopped.
    #[error("the sites service stopped")]
    Stopped,
}

/// What [`Sites::publish`] did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The signed record of the new version.
    pub record: SiteRecord,
    /// DHT nodes that stored the record (0 when no DHT peer answered: the record is
    /// still pushed to followers, and republished while this node runs).
    pub stored_on: usize,
}

/// What a request path names in a version of a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A file: its index in the manifest and its entry.
    File(usize, &'a Entry),
    /// A directory named without its trailing slash.
    Directory,
    /// Nothing.
    NotFound,
}

/// One version of a site whose manifest is here; its files may still be arriving.
#[derive(Debug)]
pub struct Version {
    /// The record of this version.
    pub record: SiteRecord,
    /// Its files.
    pub manifest: Manifest,
    files: HashMap<String, usize>,
    dirs: HashSet<String>,
    layout: Layout,
    mode: ModeHandle,
    complete: watch::Receiver<Option<Result<(), String>>>,
}

impl Version {
    fn new(
        record: SiteRecord,
        manifest: Manifest,
        manifest_size: u64,
        mode: ModeHandle,
        complete: watch::Receiver<Option<Result<(), String>>>,
    ) -> Self {
        let mut files = HashMap::new();
        let mut dirs = HashSet::new();
        let mut sizes = vec![manifest_size];
        for (i, e) in manifest.entries.iter().enumerate() {
            files.insert(e.path.clone(), i);
            sizes.push(e.size);
            let mut p = e.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                dirs.insert(parent.to_owned());
                p = parent;
            }
        }
        Self {
            record,
            manifest,
            files,
            dirs,
            layout: Layout::new(sizes),
            mode,
            complete,
        }
    }

    /// What `path` (relative, `/`-separated, no leading slash) names.
    pub fn lookup(&self, path: &str) -> Lookup<'_> {
        match self.files.get(path) {
            Some(&i) => Lookup::File(i, &self.manifest.entries[i]),
            None if path.is_empty() || self.dirs.contains(path) => Lookup::Directory,
            None => Lookup::NotFound,
        }
    }

    /// Moves the download's playhead to byte `offset` of file `index`, so what a reader
    /// waits for is fetched first (the scheduler's deadline mode).
    pub fn focus(&self, index: usize, offset: u64) {
        if self.mode.is_closed() {
            return;
        }
        let first = self.layout.blob_pieces(index + 1).start;
        self.mode.set_mode(Mode::Sequential {
            playhead: first + offset / GROUP_SIZE,
        });
    }

    /// Waits until every file of this version is here (verified), or its download
    /// failed.
    pub async fn wait_complete(&self) -> Result<(), String> {
        let mut rx = self.complete.clone();
        let done = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "the site's follower stopped".to_owned())?;
        done.clone().unwrap_or(Ok(()))
    }
}

/// Something that happened to a followed site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteEvent {
    /// A newer version is served from now on.
    Switched {
        /// Its sequence number.
        seq: u64,
        /// Its collection.
        root: kith_store::Hash,
    },
    /// A pushed update or DHT record failed its checks (bad signature, another key,
    /// malformed) and was dropped.
    Rejected {
        /// The node that wrote it (gossip messages are signed by their author; `None`
        /// for a DHT record).
        from: Option<kith_core::NodeId>,
        /// Why.
        error: SiteRecordError,
    },
    /// A valid record no newer than the version served or being fetched (a replay or a
    /// late copy) was ignored.
    Stale {
        /// Its sequence number.
        seq: u64,
    },
    /// Fetching a version failed; the follower keeps the version it serves.
    FetchFailed {
        /// The version's sequence number.
        seq: u64,
        /// Why.
        error: String,
    },
}

/// Publishes sites, and follows the sites this node opens or pins: each followed site
/// listens on its gossip topic for new versions (and re-reads its DHT record every
/// [`SitesConfig::refresh`]), fetches a new version's manifest, then switches to it.
/// Cheap to clone; following stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Sites {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    share: Share,
    dht: DhtHandle,
    gossip: Option<Gossip>,
    config: SitesConfig,
    followed: Mutex<HashMap<SiteName, Arc<Followed>>>,
}

#[derive(Debug)]
struct Followed {
    current: watch::Receiver<Option<Arc<Version>>>,
    events: tokio::sync::broadcast::Sender<SiteEvent>,
    cmd: mpsc::UnboundedSender<Cmd>,
    keep: Arc<AtomicBool>,
    last_used: Mutex<Instant>,
    task: tokio::task::AbortHandle,
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Cmd {
    /// A newer record from this node (publish): push it to followers.
    Adopt(SiteRecord, oneshot::Sender<()>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sites {
    /// A sites service over a node's share service, DHT and (for pushed updates)
    /// gossip. Without gossip, followers learn of new versions only from the DHT.
    pub fn new(share: Share, dht: DhtHandle, gossip: Option<Gossip>, config: SitesConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                share,
                dht,
                gossip,
                config,
                followed: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The share service sites are fetched and served through.
    pub fn share(&self) -> &Share {
        &self.inner.share
    }

    /// Publishes folder `dir` as a new version of the site `key` signs: imports it (in
    /// place), signs a record with a sequence number above any version seen (and at least
    /// the current time in milliseconds, so publishing from a fresh machine still goes
    /// up), stores it in the DHT and pushes it to the site's followers. This node then
    /// serves the site and keeps the record published while it runs.
    pub async fn publish(&self, key: &SecretKey, dir: &Path) -> Result<Published, PublishError> {
        let name = SiteName::of(key);
        let ticket = self.inner.share.add_dir(dir).await?;
        let mut prev = self.current(name).map(|v| v.record.seq).unwrap_or_default();
        let mut prior = None;
        if let Ok(Ok(Ok(old))) = tokio::time::timeout(
            Duration::from_secs(5),
            self.inner.dht.get_mutable(name.0, crate::record::SALT),
        )
        .await
        .map(|r| r.map(|m| SiteRecord::from_record(name, m, &self.inner.config.limits)))
        {
            prev = prev.max(old.seq);
            prior = Some(old);
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let seq = now_ms.max(prev + 1);
        let record = SiteRecord::sign(
            key,
            seq,
            ticket.root,
            &[self.inner.share.local_addr()],
            &self.inner.config.limits,
        )?;
        // The previous version's peers (its publisher, pinners, gateways that fetched
        // it) are the followers to reach: the topic is joined through them.
        let followed = self.follow(record.clone(), true, prior);
        let (tx, rx) = oneshot::channel();
        followed
            .cmd
            .send(Cmd::Adopt(record.clone(), tx))
            .map_err(|_| PublishError::Stopped)?;
        // The follower has switched to the new version and pushed it once this returns.
        rx.await.map_err(|_| PublishError::Stopped)?;
        let stored_on = self
            .inner
            .dht
            .put(Record::Mutable(record.record().clone()), None)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(site = %name, "the DHT stored no copy of the record: {e}");
                0
            });
        Ok(Published { record, stored_on })
    }

    /// Finds the newest record of site `name` in the DHT and checks it.
    pub async fn resolve(&self, name: SiteName) -> Result<SiteRecord, OpenError> {
        let got = tokio::time::timeout(
            self.inner.config.resolve_timeout,
            self.inner.dht.get_mutable(name.0, crate::record::SALT),
        )
        .await
        .map_err(|_| OpenError::Timeout(name, "resolving the name"))?;
        match got {
            Ok(m) => SiteRecord::from_record(name, m, &self.inner.config.limits)
                .map_err(|e| OpenError::Invalid(name, e)),
            Err(DhtError::Get(GetError::NotFound)) => Err(OpenError::NotFound(name)),
            Err(e) => Err(OpenError::Dht(e.to_string())),
        }
    }

    /// The current version of site `name`, following it from now on: the first open
    /// resolves the name and fetches the manifest (files arrive in the background,
    /// those a reader asks for first).
    pub async fn open(&self, name: SiteName) -> Result<Arc<Version>, OpenError> {
        let followed = match self.followed(name) {
            Some(f) => f,
            None => {
                let record = self.resolve(name).await?;
                self.follow(record, false, None)
            }
        };
        *lock(&followed.last_used) = Instant::now();
        let mut rx = followed.current.clone();
        let wait = rx.wait_for(Option::is_some);
        let version = tokio::time::timeout(self.inner.config.manifest_timeout, wait)
            .await
            .map_err(|_| OpenError::Timeout(name, "fetching the site's manifest"))?
            .map_err(|_| {
                // The follower ended: its version failed. Forget it so a later open retries.
                lock(&self.inner.followed).remove(&name);
                OpenError::Fetch(name, "no provider served the site".into())
            })?;
        version.clone().ok_or(OpenError::Stopped)
    }

    /// Opens site `name` and keeps it: every version is fetched whole, served to others
    /// and its record kept in the DHT, so the site stays up while its author is offline.
    /// Returns once the current version is here whole.
    pub async fn pin(&self, name: SiteName) -> Result<Arc<Version>, OpenError> {
        let version = self.open(name).await?;
        if let Some(f) = self.followed(name) {
            f.keep.store(true, Ordering::Relaxed);
        }
        version
            .wait_complete()
            .await
            .map_err(|e| OpenError::Fetch(name, e))?;
        // Keep the record alive in the DHT from here too.
        let _ = self
            .inner
            .dht
            .put(Record::Mutable(version.record.record().clone()), None)
            .await;
        Ok(version)
    }

    /// The current version of a followed site, without waiting.
    pub fn current(&self, name: SiteName) -> Option<Arc<Version>> {
        self.followed(name).and_then(|f| f.current.borrow().clone())
    }

    /// Watches the versions of a followed site (`None` if it is not followed).
    pub fn watch(&self, name: SiteName) -> Option<watch::Receiver<Option<Arc<Version>>>> {
        self.followed(name).map(|f| f.current.clone())
    }

    /// Events of a followed site from now on (`None` if it is not followed).
    pub fn events(&self, name: SiteName) -> Option<tokio::sync::broadcast::Receiver<SiteEvent>> {
        self.followed(name).map(|f| f.events.subscribe())
    }

    fn followed(&self, name: SiteName) -> Option<Arc<Followed>> {
        lock(&self.inner.followed).get(&name).cloned()
    }

    /// Starts following the site of `record` (or returns the follower already running).
    fn follow(&self, record: SiteRecord, keep: bool, prior: Option<SiteRecord>) -> Arc<Followed> {
        let name = record.name;
        let mut map = lock(&self.inner.followed);
        if let Some(f) = map.get(&name) {
            if keep {
                f.keep.store(true, Ordering::Relaxed);
            }
            return f.clone();
        }
        let (tx, rx) = watch::channel(None);
        let (events, _) = tokio::sync::broadcast::channel(256);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let keep = Arc::new(AtomicBool::new(keep));
        let follower = Follower {
            name,
            share: self.inner.share.clone(),
            dht: self.inner.dht.clone(),
            gossip: self.inner.gossip.clone(),
            config: self.inner.config.clone(),
            keep: keep.clone(),
            tx,
            events: events.clone(),
            current: None,
            pending: None,
            versions: JoinSet::new(),
        };
        let task = tokio::spawn(follower.run(record, prior, cmd_rx)).abort_handle();
        let f = Arc::new(Followed {
            current: rx,
            events,
            cmd: cmd_tx,
            keep,
            last_used: Mutex::new(Instant::now()),
            task,
        });
        map.insert(name, f.clone());
        // Over the cap: drop the least recently used site not kept here.
        if map.len() > self.inner.config.max_followed.max(1) {
            let victim = map
                .iter()
                .filter(|(n, f)| **n != name && !f.keep.load(Ordering::Relaxed))
                .min_by_key(|(_, f)| *lock(&f.last_used))
                .map(|(n, _)| *n);
            if let Some(v) = victim {
                map.remove(&v);
            }
        }
        f
    }
}

/// Providers of a site met on its topic when following starts.
const MAX_TOPIC_PEERS: usize = 8;

/// What a version task reports to its follower.
enum VersionMsg {
    Ready(Arc<Version>),
    Failed(u64, String),
}

/// The task that follows one site.
struct Follower {
    name: SiteName,
    share: Share,
    dht: DhtHandle,
    gossip: Option<Gossip>,
    config: SitesConfig,
    keep: Arc<AtomicBool>,
    tx: watch::Sender<Option<Arc<Version>>>,
    events: tokio::sync::broadcast::Sender<SiteEvent>,
    current: Option<Arc<Version>>,
    /// The sequence number of the version being prepared.
    pending: Option<u64>,
    /// One task per version being fetched (the current one's download included);
    /// dropping the set cancels them.
    versions: JoinSet<()>,
}

impl Follower {
    async fn run(
        mut self,
        first: SiteRecord,
        prior: Option<SiteRecord>,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
    ) {
        let (ver_tx, mut ver_rx) = mpsc::unbounded_channel();
        let me = self.share.node_id();
        let mut topic = match &self.gossip {
            Some(g) => {
                let boot: Vec<NodeAddr> = first
                    .providers
                    .iter()
                    .chain(prior.iter().flat_map(|p| p.providers.iter()))
                    .filter(|a| a.node_id != me)
                    .cloned()
                    .collect();
                g.join(self.name.topic(), boot).await.ok()
            }
            None => None,
        };
        // Whoever serves the site (pinners, gateways that fetched it) follows it too:
        // meet them on the topic, so pushes reach them whatever the record's hints say.
        let (peers_tx, mut peers_rx) = mpsc::unbounded_channel::<Vec<NodeAddr>>();
        if topic.is_some() {
            let dht = self.dht.clone();
            let roots: Vec<_> = std::iter::once(first.root)
                .chain(prior.as_ref().map(|p| p.root))
                .collect();
            let timeout = self.config.resolve_timeout;
            tokio::spawn(async move {
                for root in roots {
                    let key = kith_overlay::dht::Key(*root.as_bytes());
                    if let Ok(Ok(found)) =
                        tokio::time::timeout(timeout, dht.find_providers(key)).await
                    {
                        let peers: Vec<NodeAddr> = found
                            .into_iter()
                            .filter(|a| a.node_id != me)
                            .take(MAX_TOPIC_PEERS)
                            .collect();
                        if !peers.is_empty() && peers_tx.send(peers).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        self.consider(first, &ver_tx);
        let mut refresh = tokio::time::interval(self.config.refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        let (found_tx, mut found_rx) = mpsc::unbounded_channel();
        let mut adopted: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Adopt(record, done)) => {
                        match &self.current {
                            // Already switched to it (it was the follower's first record):
                            // push it now.
                            Some(c) if c.record.seq >= record.seq => {
                                if let Some(t) = &topic {
                                    let _ = t.broadcast(c.record.to_update()).await;
                                }
                                let _ = done.send(());
                            }
                            _ => {
                                adopted.push((record.seq, done));
                                self.consider(record, &ver_tx);
                            }
                        }
                    }
                    None => return,
                },
                ev = next_topic_event(&mut topic) => match ev {
                    Some(Event::Received { payload, author, .. }) => {
                        match SiteRecord::from_update(self.name, &payload, &self.config.limits) {
                            Ok(record) => self.consider(record, &ver_tx),
                            Err(error) => {
                                tracing::debug!(site = %self.name, "ignored a site update: {error}");
                                let _ = self.events.send(SiteEvent::Rejected { from: Some(author), error });
                            }
                        }
                    }
                    Some(Event::NeighborUp(_)) => {
                        // A new neighbour may have missed the current version: tell it.
                        if let (Some(t), Some(v)) = (&topic, &self.current) {
                            let _ = t.broadcast_neighbors(v.record.to_update()).await;
                        }
                    }
                    Some(_) => {}
                    None => topic = None,
                },
                msg = ver_rx.recv() => match msg {
                    Some(VersionMsg::Ready(v)) => {
                        let seq = v.record.seq;
                        let ours = adopted.iter().any(|(s, _)| *s == seq);
                        if self.current.as_ref().is_none_or(|c| c.record.seq < seq) {
                            self.switch(v.clone(), &topic, ours).await;
                        }
                        if self.pending == Some(seq) {
                            self.pending = None;
                        }
                        let (ready, rest): (Vec<_>, Vec<_>) =
                            adopted.drain(..).partition(|(s, _)| *s <= seq);
                        adopted = rest;
                        for (_, done) in ready {
                            let _ = done.send(());
                        }
                    }
                    Some(VersionMsg::Failed(seq, e)) => {
                        tracing::warn!(site = %self.name, seq, "fetching a version failed: {e}");
                        let _ = self.events.send(SiteEvent::FetchFailed { seq, error: e });
                        if self.pending == Some(seq) {
                            self.pending = None;
                        }
                        if self.current.is_none() && self.pending.is_none() {
                            // Nothing to serve: end, so `open` reports the failure.
                            return;
                        }
                    }
                    None => return,
                },
                _ = refresh.tick() => {
                    let (dht, name, tx) = (self.dht.clone(), self.name, found_tx.clone());
                    let timeout = self.config.resolve_timeout;
                    tokio::spawn(async move {
                        if let Ok(Ok(m)) = tokio::time::timeout(timeout, dht.get_mutable(name.0, crate::record::SALT)).await {
                            let _ = tx.send(m);
                        }
                    });
                }
                Some(peers) = peers_rx.recv() => {
                    if let Some(t) = &topic {
                        let _ = t.add_peers(peers).await;
                    }
                }
                Some(m) = found_rx.recv() => {
                    match SiteRecord::from_record(self.name, m, &self.config.limits) {
                        Ok(record) => self.consider(record, &ver_tx),
                        Err(error) => {
                            tracing::debug!(site = %self.name, "ignored a DHT record: {error}");
                            let _ = self.events.send(SiteEvent::Rejected { from: None, error });
                        }
                    }
                }
            }
        }
    }

    /// Starts fetching `record`'s version if it is newer than every version known.
    fn consider(&mut self, record: SiteRecord, ver_tx: &mpsc::UnboundedSender<VersionMsg>) {
        let newest = self
            .pending
            .into_iter()
            .chain(self.current.as_ref().map(|c| c.record.seq))
            .max();
        if newest.is_some_and(|n| record.seq <= n) {
            let _ = self.events.send(SiteEvent::Stale { seq: record.seq });
            return;
        }
        self.pending = Some(record.seq);
        let (share, tx) = (self.share.clone(), ver_tx.clone());
        let timeout = self.config.manifest_timeout;
        self.versions
            .spawn(fetch_version(share, record, timeout, tx));
    }

    /// Makes `v` the version served and lets the old one go. The publisher (`ours`)
    /// pushes it to the topic, whose tree carries it to every follower; a pinner
    /// stores the record in the DHT too, so it outlives the publisher.
    async fn switch(&mut self, v: Arc<Version>, topic: &Option<Topic>, ours: bool) {
        let old = self.current.replace(v.clone());
        // The event first: whoever sees the new version (and subscribes then) must not
        // get its event afterwards.
        let _ = self.events.send(SiteEvent::Switched {
            seq: v.record.seq,
            root: v.record.root,
        });
        self.tx.send_replace(Some(v.clone()));
        if let Some(t) = topic {
            let me = self.share.node_id();
            let peers: Vec<NodeAddr> = v
                .record
                .providers
                .iter()
                .filter(|a| a.node_id != me)
                .cloned()
                .collect();
            if !peers.is_empty() {
                let _ = t.add_peers(peers).await;
            }
            if ours {
                let _ = t.broadcast(v.record.to_update()).await;
            }
        }
        if self.keep.load(Ordering::Relaxed) && !ours {
            let _ = self
                .dht
                .put(Record::Mutable(v.record.record().clone()), None)
                .await;
        }
        if let Some(old) = old {
            if old.record.root != v.record.root {
                // Stop serving the old version; the store collects it later.
                let _ = self.share.remove(&old.record.root);
            }
        }
    }
}

async fn next_topic_event(topic: &mut Option<Topic>) -> Option<Event> {
    match topic {
        Some(t) => t.next_event().await,
        None => std::future::pending().await,
    }
}

/// Fetches one version: its manifest first (then reports it ready), then every file.
async fn fetch_version(
    share: Share,
    record: SiteRecord,
    timeout: Duration,
    tx: mpsc::UnboundedSender<VersionMsg>,
) {
    let seq = record.seq;
    let ticket = Ticket::new(
        record.root,
        BlobFormat::Collection,
        record.providers.clone(),
    );
    let mut download = share.download(&ticket, DownloadOptions::default());
    let mode = download.mode_handle();
    let (done_tx, done_rx) = watch::channel(None);
    let root = record.root;
    // The manifest is blob 0 of the download: wait for it whole, or the download's end.
    let manifest_here = async {
        share
            .wait_for_groups(root, 0..u64::MAX)
            .await
            .map_err(|e| e.to_string())
    };
    let ended_first = tokio::select! {
        r = tokio::time::timeout(timeout, manifest_here) => match r {
            Ok(Ok(_)) => false,
            Ok(Err(e)) => { let _ = tx.send(VersionMsg::Failed(seq, e)); return; }
            Err(_) => { let _ = tx.send(VersionMsg::Failed(seq, "timed out fetching the manifest".into())); return; }
        },
        () = drain(&mut download) => true,
    };
    let mut download = Some(download);
    let result = match download.take_if(|_| ended_first) {
        Some(d) => Some(d.finish().await),
        None => None,
    };
    if let Some(Err(e)) = &result {
        let _ = tx.send(VersionMsg::Failed(seq, e.to_string()));
        return;
    }
    let store = share.store().clone();
    let read = tokio::task::spawn_blocking(move || {
        let size = store.status(root).ok().flatten().map(|s| s.size);
        collection::read_manifest(&*store, root).map(|m| (m, size.unwrap_or_default()))
    })
    .await;
    let (manifest, size) = match read {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            let _ = tx.send(VersionMsg::Failed(seq, format!("manifest: {e}")));
            return;
        }
        Err(e) => {
            let _ = tx.send(VersionMsg::Failed(seq, e.to_string()));
            return;
        }
    };
    let version = Arc::new(Version::new(record, manifest, size, mode, done_rx));
    let _ = tx.send(VersionMsg::Ready(version));
    let outcome: Result<(), DownloadError> = match result {
        Some(r) => r.map(|_| ()),
        None => match download {
            Some(mut d) => {
                drain(&mut d).await;
                d.finish().await.map(|_| ())
            }
            None => Ok(()),
        },
    };
    // Waiters see the value even after the sender is gone.
    done_tx.send_replace(Some(outcome.map_err(|e| e.to_string())));
}

/// Reads a download's events until it ends.
async fn drain(download: &mut kith_share::Download) {
    while download.next_event().await.is_some() {}
}
