//! Port mapping on the home router: PCP (RFC 6887), NAT-PMP (RFC 6886) and UPnP-IGD.
//!
//! A [`PortMapper`] asks the gateway to forward an external UDP port to a local socket,
//! keeps the mapping alive by renewing it at half its lifetime, and removes it on
//! [`shutdown`](PortMapper::shutdown) or drop (best effort, bounded in time). The
//! external address is published through a [`watch`](PortMapper::watch) channel, so a
//! caller can offer it to peers as soon as it exists and withdraw it when it is lost.
//!
//! Protocols are tried in the order PCP, NAT-PMP, UPnP-IGD (each can be switched off in
//! [`Config`]): PCP and NAT-PMP share UDP port 5351 on the gateway and a PCP request to a
//! NAT-PMP-only gateway is answered with "unsupported version", so NAT-PMP costs nothing
//! extra; UPnP needs SSDP multicast, an HTTP fetch and a SOAP call, so it comes last.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use kith_transport::portmap::{Config, PortMapper};
//!
//! let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
//! let mapper = PortMapper::start(Config::default(), socket.local_addr()?);
//! let mut changes = mapper.watch();
//! // Wait (bounded) for the first attempt to succeed.
//! let found = tokio::time::timeout(std::time::Duration::from_secs(10),
//!     changes.wait_for(|m| m.is_some())).await;
//! if found.is_ok() {
//!     println!("reachable at {:?} via {:?}", mapper.external(), mapper.protocol());
//! }
//! mapper.shutdown().await; // deletes the mapping on the gateway
//! # Ok(()) }
//! ```
//!
//! Limits: every request has a timeout and a bounded number of attempts; SSDP replies
//! are capped in count ([`MAX_SSDP_REPLIES`]) and size ([`MAX_SSDP_REPLY`] bytes), HTTP
//! responses at [`MAX_HTTP_RESPONSE`] bytes before any parsing; only
//! `http://<IPv4 literal>` URLs are followed. IPv4 only: IPv6 rarely needs a NAT mapping.

mod upnp;
pub(crate) mod wire;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

pub use upnp::{MAX_HTTP_RESPONSE, MAX_SSDP_REPLIES, MAX_SSDP_REPLY};
use wire::{Granted, PcpReply};

/// A port-mapping protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Port Control Protocol, RFC 6887.
    Pcp,
    /// NAT Port Mapping Protocol, RFC 6886.
    NatPmp,
    /// UPnP Internet Gateway Device (WANIPConnection / WANPPPConnection).
    Upnp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Pcp => "pcp",
            Protocol::NatPmp => "natpmp",
            Protocol::Upnp => "upnp",
        })
    }
}

/// A mapping held on the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The address peers on the internet reach the local socket at.
    pub external: SocketAddr,
    /// The protocol that made the mapping.
    pub protocol: Protocol,
    /// The lifetime the gateway granted (zero: until deleted, UPnP only).
    pub lifetime: Duration,
}

/// How a [`PortMapper`] finds the gateway and what it asks for.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The gateway to ask. `None` (default): the IPv4 default gateway of the host (read
    /// from `/proc/net/route` on Linux; elsewhere a gateway must be given).
    pub gateway: Option<Ipv4Addr>,
    /// Try PCP. Default on.
    pub pcp: bool,
    /// Try NAT-PMP. Default on.
    pub nat_pmp: bool,
    /// Try UPnP-IGD. Default on.
    pub upnp: bool,
    /// Lifetime to request. Default 2 h (RFC 6886's recommendation); renewed at half of
    /// the lifetime the gateway grants (at most every hour, at least 1 s apart).
    pub lifetime: Duration,
    /// Timeout of one request (a PCP/NAT-PMP datagram, an SSDP wait, an HTTP exchange).
    /// Default 1 s.
    pub request_timeout: Duration,
    /// Attempts per PCP/NAT-PMP request (each waits `request_timeout`). Default 2.
    pub attempts: u32,
    /// Wait after every protocol failed before trying again; doubled after each failure
    /// up to 16 times this value. Default 60 s.
    pub retry_interval: Duration,
    /// Bound on removing the mapping at shutdown. Default 2 s.
    pub delete_timeout: Duration,
    /// UDP port of the PCP/NAT-PMP server. Default 5351 (what a build without
    /// `test-util` always uses); tests use another. Test hook: only with the `test-util`
    /// feature.
    #[cfg(feature = "test-util")]
    pub pcp_port: u16,
    /// Where SSDP searches go. Default `239.255.255.250:1900` (what a build without
    /// `test-util` always uses); tests use loopback. Test hook: only with the
    /// `test-util` feature.
    #[cfg(feature = "test-util")]
    pub ssdp_target: SocketAddr,
}

/// The PCP/NAT-PMP server port (RFC 6887, RFC 6886).
const PCP_PORT: u16 = wire::SERVER_PORT;

/// The SSDP multicast group and port (UPnP Device Architecture).
const SSDP_TARGET: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 255, 250)), 1900);

impl Config {
    /// The PCP/NAT-PMP server port: 5351 unless a test set `pcp_port`.
    fn pcp_port(&self) -> u16 {
        #[cfg(feature = "test-util")]
        return self.pcp_port;
        #[cfg(not(feature = "test-util"))]
        PCP_PORT
    }

    /// Where SSDP searches go: the multicast group unless a test set `ssdp_target`.
    fn ssdp_target(&self) -> SocketAddr {
        #[cfg(feature = "test-util")]
        return self.ssdp_target;
        #[cfg(not(feature = "test-util"))]
        SSDP_TARGET
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gateway: None,
            pcp: true,
            nat_pmp: true,
            upnp: true,
            lifetime: Duration::from_secs(2 * 3600),
            request_timeout: Duration::from_secs(1),
            attempts: 2,
            retry_interval: Duration::from_secs(60),
            delete_timeout: Duration::from_secs(2),
            #[cfg(feature = "test-util")]
            pcp_port: PCP_PORT,
            #[cfg(feature = "test-util")]
            ssdp_target: SSDP_TARGET,
        }
    }
}

/// Why a mapping could not be made, renewed or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortMapError {
    /// No gateway: none configured, none in the routing table, or no UPnP device
    /// answered the SSDP search.
    #[error("no gateway found")]
    NoGateway,
    /// The local socket is not IPv4 (only IPv4 mappings are made).
    #[error("port mapping needs an IPv4 socket, got {0}")]
    NotIpv4(SocketAddr),
    /// Every enabled protocol is switched off in [`Config`].
    #[error("no port-mapping protocol enabled")]
    NoProtocol,
    /// The gateway did not answer within the configured timeouts and attempts.
    #[error("gateway did not answer in time")]
    Timeout,
    /// The gateway answered PCP or NAT-PMP with an error result code.
    #[error("gateway refused the mapping (result code {0})")]
    Refused(u16),
    /// The gateway answered a UPnP action with this UPnP error code (or HTTP status).
    #[error("UPnP gateway error {0}")]
    Upnp(u16),
    /// An HTTP response from the gateway was longer than this many bytes.
    #[error("gateway response exceeds {0} bytes")]
    TooLarge(usize),
    /// A reply was malformed or did not answer the request.
    #[error("bad reply from gateway: {0}")]
    BadResponse(&'static str),
    /// A local socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<wire::WireError> for PortMapError {
    fn from(e: wire::WireError) -> Self {
        match e {
            wire::WireError::Refused(code) => PortMapError::Refused(code),
            wire::WireError::Length(_) => PortMapError::BadResponse("reply of wrong length"),
            wire::WireError::Version(..) => PortMapError::BadResponse("reply of wrong version"),
            wire::WireError::Opcode(_) => PortMapError::BadResponse("reply of wrong opcode"),
            wire::WireError::Mismatch => PortMapError::BadResponse("reply for another request"),
        }
    }
}

/// Handle to a running port mapper. Dropping it removes the mapping in the background
/// (best effort, within [`Config::delete_timeout`]); [`shutdown`](Self::shutdown) does
/// the same and waits for it.
#[derive(Debug)]
pub struct PortMapper {
    state: watch::Receiver<Option<Mapping>>,
    refresh: Arc<tokio::sync::Notify>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PortMapper {
    /// Starts mapping `local` (an IPv4 UDP socket address; an unspecified IP means the
    /// address the host uses towards the gateway). Must be called inside a tokio runtime.
    /// Failures are logged and retried after [`Config::retry_interval`]; watch
    /// [`watch`](Self::watch) for the outcome.
    pub fn start(config: Config, local: SocketAddr) -> Self {
        let (tx, state) = watch::channel(None);
        let (stop, stopped) = oneshot::channel();
        let refresh = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(run(config, local, tx, refresh.clone(), stopped));
        Self {
            state,
            refresh,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The current mapping, if one is held.
    pub fn mapping(&self) -> Option<Mapping> {
        *self.state.borrow()
    }

    /// The external address, if a mapping is held.
    pub fn external(&self) -> Option<SocketAddr> {
        self.mapping().map(|m| m.external)
    }

    /// The protocol of the current mapping.
    pub fn protocol(&self) -> Option<Protocol> {
        self.mapping().map(|m| m.protocol)
    }

    /// Asks the gateway again now instead of at the next renewal (the network changed:
    /// the gateway or its external address may be new); failures back off from the
    /// start again.
    pub fn refresh(&self) {
        self.refresh.notify_one();
    }

    /// A receiver that sees every change of the mapping (made, moved, lost).
    pub fn watch(&self) -> watch::Receiver<Option<Mapping>> {
        self.state.clone()
    }

    /// Stops renewing and removes the mapping from the gateway, waiting at most
    /// [`Config::delete_timeout`] (plus one in-flight request).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PortMapper {
    fn drop(&mut self) {
        // The task sees the stop signal (or the closed channel) and deletes the mapping.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A held mapping and what is needed to renew and delete it.
#[derive(Debug)]
struct Held {
    mapping: Mapping,
    /// When to renew.
    renew_at: Instant,
    /// When the gateway drops it unless renewed.
    expires: Instant,
    how: How,
}

#[derive(Debug)]
enum How {
    Pcp { nonce: [u8; 12] },
    NatPmp,
    Upnp { igd: upnp::Igd },
}

/// What one attempt needs to know.
struct Ctx {
    config: Config,
    gateway: Ipv4Addr,
    /// The local socket, with the IP the host uses towards the gateway.
    local: SocketAddrV4,
}

async fn run(
    config: Config,
    local: SocketAddr,
    tx: watch::Sender<Option<Mapping>>,
    refresh: Arc<tokio::sync::Notify>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut failures: u32 = 0;
    let mut held: Option<Held> = None;
    loop {
        let attempt = async {
            match &held {
                Some(h) => renew(&config, local, h, &mut rng).await,
                None => map(&config, local, &mut rng).await,
            }
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = &mut stopped => break,
        };
        let now = Instant::now();
        let next = match result {
            Ok(h) => {
                failures = 0;
                if tx.borrow().as_ref() != Some(&h.mapping) {
                    tracing::info!(external = %h.mapping.external, protocol = %h.mapping.protocol,
                        lifetime = ?h.mapping.lifetime, "port mapping held");
                    tx.send_replace(Some(h.mapping));
                }
                let at = h.renew_at;
                held = Some(h);
                at
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff = config
                    .retry_interval
                    .saturating_mul(1 << failures.saturating_sub(1).min(4));
                match held.as_ref().map(|h| h.expires) {
                    // Renewal failed but the mapping still lives: retry before it ends.
                    Some(expires) if expires > now + Duration::from_secs(1) => {
                        tracing::debug!(error = %e, "port mapping renewal failed; retrying");
                        now + backoff.min((expires - now) / 2)
                    }
                    _ => {
                        held = None;
                        if tx.send_replace(None).is_some() {
                            tracing::info!(error = %e, "port mapping lost");
                        } else {
                            tracing::debug!(error = %e, "port mapping failed");
                        }
                        now + backoff
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = refresh.notified() => failures = 0,
            _ = &mut stopped => break,
        }
    }
    if let Some(h) = held {
        let timeout = config.delete_timeout;
        match tokio::time::timeout(timeout, delete(&config, local, &h)).await {
            Ok(Ok(())) => tracing::info!(external = %h.mapping.external, "port mapping removed"),
            Ok(Err(e)) => tracing::debug!(error = %e, "removing the port mapping failed"),
            Err(_) => tracing::debug!("removing the port mapping timed out"),
        }
    }
    tx.send_replace(None);
}

/// The gateway and the local address as the gateway sees it.
async fn context(config: &Config, local: SocketAddr) -> Result<Ctx, PortMapError> {
    let SocketAddr::V4(local) = local else {
        return Err(PortMapError::NotIpv4(local));
    };
    let gateway = match config.gateway {
        Some(g) => g,
        None => default_gateway().ok_or(PortMapError::NoGateway)?,
    };
    let ip = if local.ip().is_unspecified() {
        // The source address the kernel picks towards the gateway (no packet is sent).
        let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
        probe.connect((gateway, config.pcp_port())).await?;
        match probe.local_addr()?.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => return Err(PortMapError::NoGateway),
        }
    } else {
        *local.ip()
    };
    Ok(Ctx {
        config: config.clone(),
        gateway,
        local: SocketAddrV4::new(ip, local.port()),
    })
}

fn renew_after(lifetime: Duration) -> Duration {
    (lifetime / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

fn lifetime_secs(config: &Config) -> u32 {
    u32::try_from(config.lifetime.as_secs())
        .unwrap_or(u32::MAX)
        .max(1)
}

async fn map(config: &Config, local: SocketAddr, rng: &mut impl Rng) -> Result<Held, PortMapError> {
    let ctx = context(config, local).await?;
    if !(config.pcp || config.nat_pmp || config.upnp) {
        return Err(PortMapError::NoProtocol);
    }
    let mut last = PortMapError::NoProtocol;
    let mut natpmp = config.nat_pmp;
    if config.pcp {
        let nonce: [u8; 12] = rng.r#gen();
        match pcp(&ctx, nonce, ctx.local.port(), lifetime_secs(config)).await {
            Ok(Some(h)) => return Ok(h),
            Ok(None) => {} // NAT-PMP only: fall through.
            Err(e) => {
                tracing::debug!(error = %e, "PCP failed");
                // Silence on 5351 means NAT-PMP will be silent too.
                if matches!(e, PortMapError::Timeout) {
                    natpmp = false;
                }
                last = e;
            }
        }
    }
    if natpmp {
        match nat_pmp(&ctx, ctx.local.port(), lifetime_secs(config)).await {
            Ok(h) => return Ok(h),
            Err(e) => {
                tracing::debug!(error = %e, "NAT-PMP failed");
                last = e;
            }
        }
    }
    if config.upnp {
        match upnp_map(&ctx, None, rng).await {
            Ok(h) => return Ok(h),
            Err(e) => {
                tracing::debug!(error = %e, "UPnP failed");
                last = e;
            }
        }
    }
    Err(last)
}

async fn renew(
    config: &Config,
    local: SocketAddr,
    held: &Held,
    rng: &mut impl Rng,
) -> Result<Held, PortMapError> {
    let ctx = context(config, local).await?;
    let port = held.mapping.external.port();
    match &held.how {
        How::Pcp { nonce } => match pcp(&ctx, *nonce, port, lifetime_secs(config)).await? {
            Some(h) => Ok(h),
            None => Err(PortMapError::BadResponse("gateway stopped speaking PCP")),
        },
        How::NatPmp => nat_pmp(&ctx, port, lifetime_secs(config)).await,
        How::Upnp { igd } => upnp_map(&ctx, Some((igd.clone(), port)), rng).await,
    }
}

async fn delete(config: &Config, local: SocketAddr, held: &Held) -> Result<(), PortMapError> {
    let ctx = context(config, local).await?;
    let internal = ctx.local.port();
    match &held.how {
        How::Pcp { nonce } => {
            let req = wire::pcp_map_request(*ctx.local.ip(), *nonce, internal, 0, 0);
            let reply = exchange(&ctx, &req).await?;
            wire::decode_pcp_map(&reply, nonce, internal)?;
        }
        How::NatPmp => {
            let reply = exchange(&ctx, &wire::natpmp_map_request(internal, 0, 0)).await?;
            wire::decode_natpmp_map(&reply, internal)?;
        }
        How::Upnp { igd } => {
            igd.delete(held.mapping.external.port(), config.request_timeout)
                .await?;
        }
    }
    Ok(())
}

/// Sends `req` to the gateway's PCP/NAT-PMP port and returns the first reply from it,
/// trying `attempts` times with `request_timeout` each.
async fn exchange(ctx: &Ctx, req: &[u8]) -> Result<Vec<u8>, PortMapError> {
    let sock = UdpSocket::bind(SocketAddr::new((*ctx.local.ip()).into(), 0)).await?;
    let server = SocketAddr::new(ctx.gateway.into(), ctx.config.pcp_port());
    sock.connect(server).await?;
    let mut buf = [0u8; wire::MAX_PCP_MESSAGE + 1];
    for _ in 0..ctx.config.attempts.max(1) {
        sock.send(req).await?;
        let deadline = Instant::now() + ctx.config.request_timeout;
        match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => return Ok(buf[..n].to_vec()),
            // ICMP port unreachable surfaces here: nobody listens on the gateway.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(PortMapError::Timeout);
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {}
        }
    }
    Err(PortMapError::Timeout)
}

fn held(ip: Ipv4Addr, g: Granted, protocol: Protocol, how: How) -> Result<Held, PortMapError> {
    if g.external_port == 0 || g.lifetime == 0 {
        return Err(PortMapError::BadResponse("gateway granted no port"));
    }
    let lifetime = Duration::from_secs(u64::from(g.lifetime));
    Ok(Held {
        mapping: Mapping {
            external: SocketAddr::new(ip.into(), g.external_port),
            protocol,
            lifetime,
        },
        renew_at: Instant::now() + renew_after(lifetime),
        expires: Instant::now() + lifetime,
        how,
    })
}

/// PCP MAP; `Ok(None)` when the gateway speaks only NAT-PMP.
async fn pcp(
    ctx: &Ctx,
    nonce: [u8; 12],
    suggested: u16,
    lifetime: u32,
) -> Result<Option<Held>, PortMapError> {
    let internal = ctx.local.port();
    let req = wire::pcp_map_request(*ctx.local.ip(), nonce, internal, suggested, lifetime);
    let reply = exchange(ctx, &req).await?;
    match wire::decode_pcp_map(&reply, &nonce, internal)? {
        PcpReply::NatPmpOnly => Ok(None),
        PcpReply::Granted(g) => {
            let ip = g
                .external_ip
                .filter(|ip| !ip.is_unspecified())
                .ok_or(PortMapError::BadResponse("PCP reply without external IPv4"))?;
            held(ip, g, Protocol::Pcp, How::Pcp { nonce }).map(Some)
        }
    }
}

async fn nat_pmp(ctx: &Ctx, suggested: u16, lifetime: u32) -> Result<Held, PortMapError> {
    let internal = ctx.local.port();
    let reply = exchange(ctx, &wire::natpmp_external_request()).await?;
    let ip = wire::decode_natpmp_external(&reply)?;
    if ip.is_unspecified() {
        return Err(PortMapError::BadResponse("gateway has no external address"));
    }
    let reply = exchange(
        ctx,
        &wire::natpmp_map_request(internal, suggested, lifetime),
    )
    .await?;
    let g = wire::decode_natpmp_map(&reply, internal)?;
    held(ip, g, Protocol::NatPmp, How::NatPmp)
}

/// UPnP AddPortMapping: first the port we had (renewal) or the local port, then up to
/// two random ports if that one is taken.
async fn upnp_map(
    ctx: &Ctx,
    known: Option<(upnp::Igd, u16)>,
    rng: &mut impl Rng,
) -> Result<Held, PortMapError> {
    let t = ctx.config.request_timeout;
    let (igd, first) = match known {
        Some((igd, port)) => (igd, port),
        None => {
            let location = upnp::discover(*ctx.local.ip(), ctx.config.ssdp_target(), t).await?;
            if location.addr.ip() != IpAddr::V4(ctx.gateway) {
                tracing::debug!(location = ?location.addr, gateway = %ctx.gateway,
                    "UPnP device is not the gateway; using it anyway");
            }
            (
                upnp::Igd::from_location(&location, t).await?,
                ctx.local.port(),
            )
        }
    };
    let ip = igd.external_ip(t).await?;
    if ip.is_unspecified() {
        return Err(PortMapError::BadResponse("gateway has no external address"));
    }
    let mut lease = lifetime_secs(&ctx.config);
    let mut port = first;
    let mut result = Err(PortMapError::NoProtocol);
    // Bounded: at most 4 calls (a permanent-lease retry and two other ports).
    for _ in 0..4 {
        result = igd.add(port, ctx.local, lease, t).await;
        match &result {
            Err(PortMapError::Upnp(upnp::ONLY_PERMANENT_LEASES)) if lease != 0 => lease = 0,
            Err(PortMapError::Upnp(upnp::CONFLICT)) => port = rng.gen_range(1024..=65535),
            _ => break,
        }
    }
    result?;
    // A permanent lease is still renewed (re-added) hourly and deleted at shutdown.
    let granted = if lease == 0 { 7200 } else { lease };
    let mut h = held(
        ip,
        Granted {
            external_port: port,
            external_ip: Some(ip),
            lifetime: granted,
        },
        Protocol::Upnp,
        How::Upnp { igd },
    )?;
    h.mapping.lifetime = Duration::from_secs(u64::from(lease));
    Ok(h)
}

/// The IPv4 default gateway from `/proc/net/route` (Linux); `None` elsewhere.
pub fn default_gateway() -> Option<Ipv4Addr> {
    use std::io::Read;
    let file = std::fs::File::open("/proc/net/route").ok()?;
    let mut text = String::new();
    file.take(64 * 1024).read_to_string(&mut text).ok()?;
    parse_proc_route(&text)
}

/// The gateway of the first default route (destination 0, flag RTF_GATEWAY) in the text
/// of `/proc/net/route`.
fn parse_proc_route(text: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, gw, flags, mask) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(7)?);
        let flags = u32::from_str_radix(flags, 16).ok()?;
        if *dest != "00000000" || *mask != "00000000" || flags & (RTF_UP | RTF_GATEWAY) != 3 {
            return None;
        }
        // The kernel prints the network-order bytes read as a host-order integer.
        let raw = u32::from_str_radix(gw, 16).ok()?;
        Some(Ipv4Addr::from(raw.to_ne_bytes()))
    })
}

/// Runs the UPnP parsers on `data` (for the fuzz target).
pub(crate) fn fuzz_upnp(data: &[u8]) {
    upnp::fuzz(data);
}

#[cfg(test)]
mod tests;
