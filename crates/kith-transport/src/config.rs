//! Endpoint configuration and limits, with safe defaults.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How an [`Endpoint`](crate::Endpoint) binds and behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// IPv4 UDP socket address to bind (`None`: no IPv4). Default `0.0.0.0:0`.
    pub bind_v4: Option<SocketAddr>,
    /// IPv6 UDP socket address to bind (`None`: no IPv6). Default `[::]:0`. If binding
    /// fails (no IPv6 on the host) the endpoint runs IPv4 only; failing to bind IPv4
    /// when it was asked for is an error.
    pub bind_v6: Option<SocketAddr>,
    /// Close a connection after this long without any packet from the peer. Default 30 s.
    pub idle_timeout: Duration,
    /// Send a keep-alive after this long without sending (`None`: never). Default 10 s.
    pub keep_alive: Option<Duration>,
    /// Give up a dial whose handshake has not completed after this long. Default 10 s.
    pub handshake_timeout: Duration,
    /// Try 0-RTT when a resumable session to the peer is cached. Default on.
    ///
    /// Early data is replay-protected by single-use session tickets held in memory.
    /// A stream opened in 0-RTT fails with `StreamError::ZeroRttRejected` if the peer
    /// rejects early data (for example after it restarted); open it again.
    pub zero_rtt: bool,
    /// Resource limits.
    pub limits: Limits,
    /// Home relay: reserved at bind and advertised in [`node_addr`](crate::Endpoint::node_addr)
    /// so peers that cannot reach us directly come through it. Default none.
    pub relay: Option<kith_core::NodeAddr>,
    /// Offer relaying to others with these limits (opt-in). Default none.
    pub relay_server: Option<crate::relay::RelayConfig>,
    /// STUN servers (RFC 8489 Binding) asked at bind and every
    /// [`HolePunchConfig::stun_refresh`] for the addresses this endpoint's sockets map to.
    /// The answers become hole-punching candidates and, with the addresses peers
    /// observe, classify the NAT in front of the endpoint (see
    /// [`Endpoint::nat`](crate::Endpoint::nat)). Two servers on different IP addresses
    /// (or one server and the home relay) are needed to tell an endpoint-dependent
    /// mapping. Default none.
    pub stun_servers: Vec<SocketAddr>,
    /// Hole-punching behaviour and bounds.
    pub hole_punch: HolePunchConfig,
    /// Map the IPv4 socket on the home router (PCP, NAT-PMP, UPnP-IGD; see
    /// [`portmap`](crate::portmap)) and offer the external address to peers: in
    /// [`node_addr`](crate::Endpoint::node_addr) and as a hole-punching candidate. The
    /// mapping is renewed while the endpoint runs and removed by
    /// [`close`](crate::Endpoint::close). Default `None` (off): a library does not open
    /// ports on a user's router unless the application asks; the `kith` CLI has
    /// `--port-map`.
    pub port_mapping: Option<crate::portmap::Config>,
    /// Wait this long after a relayed connection starts before probing for a direct
    /// path. Default zero (what a build without `test-util` always does); tests use it
    /// to hold a connection on the relay. Test hook: only with the `test-util` feature.
    #[cfg(feature = "test-util")]
    pub path_probe_delay: Duration,
    /// Reach relays over TLS/TCP only, as a host whose UDP is blocked must. Default off
    /// (QUIC first, TCP when QUIC fails; what a build without `test-util` always does);
    /// tests use it to model a UDP-blocked host. Test hook: only with the `test-util`
    /// feature.
    #[cfg(feature = "test-util")]
    pub relay_over_tcp_only: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            bind_v4: Some(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)),
            bind_v6: Some(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0)),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(10)),
            handshake_timeout: Duration::from_secs(10),
            zero_rtt: true,
            limits: Limits::default(),
            relay: None,
            relay_server: None,
            stun_servers: Vec::new(),
            hole_punch: HolePunchConfig::default(),
            port_mapping: None,
            #[cfg(feature = "test-util")]
            path_probe_delay: Duration::ZERO,
            #[cfg(feature = "test-util")]
            relay_over_tcp_only: false,
        }
    }
}

impl EndpointConfig {
    /// IPv4 loopback only, on an ephemeral port: for tests and local demos.
    pub fn loopback() -> Self {
        Self {
            bind_v4: Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0)),
            bind_v6: None,
            ..Self::default()
        }
    }

    /// How long a relayed connection waits before probing for a direct path: zero unless
    /// a test set `path_probe_delay`.
    pub(crate) fn path_probe_delay(&self) -> Duration {
        #[cfg(feature = "test-util")]
        return self.path_probe_delay;
        #[cfg(not(feature = "test-util"))]
        Duration::ZERO
    }

    /// Whether relays are reached over TLS/TCP only: never unless a test set
    /// `relay_over_tcp_only`.
    pub(crate) fn relay_over_tcp_only(&self) -> bool {
        #[cfg(feature = "test-util")]
        return self.relay_over_tcp_only;
        #[cfg(not(feature = "test-util"))]
        false
    }
}

/// Hole punching: how hard a relayed connection tries to find a direct path.
///
/// When one side's NAT maps endpoint-dependently (a new public port per destination)
/// and the other's does not, the side behind the endpoint-dependent NAT opens
/// `birthday_sockets` extra sockets and sends one probe from each towards the peer
/// (opening as many NAT mappings), while the peer sends up to `birthday_probes` probes
/// to random ports of its public address: by the birthday paradox one of them very
/// likely lands on an open mapping (256 sockets and 2,048 probes miss with probability
/// about e^-8 on a NAT that picks ports from 1024–65535). Both sides behind
/// endpoint-dependent NATs cannot be predicted: those connections stay relayed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HolePunchConfig {
    /// Try birthday-paradox probing where it applies. Default on.
    pub birthday: bool,
    /// Extra sockets the endpoint-dependent side opens (at most one attempt runs at a
    /// time per endpoint). Default 256.
    pub birthday_sockets: usize,
    /// Most probes the other side sends in one attempt. Default 2,048.
    pub birthday_probes: usize,
    /// Probes per second the other side sends. Default 5,000 (330 kB/s).
    pub birthday_rate: u32,
    /// How long the extra sockets wait for a probe before they are closed (the one a
    /// direct path uses stays). Default 10 s.
    pub birthday_window: Duration,
    /// Attempts per connection (a later one when the direct path is lost). Default 3.
    pub birthday_attempts: u32,
    /// How often the STUN servers are asked again. Default 5 min. An answer that
    /// differs from the server's previous one (the NAT was renumbered) counts as a
    /// network change (see [`Endpoint::network_changed`](crate::Endpoint::network_changed)).
    pub stun_refresh: Duration,
    /// How often the host's interface addresses are checked; a change counts as a
    /// network change (see
    /// [`Endpoint::network_changed`](crate::Endpoint::network_changed)). At least
    /// 1 s. `None` disables the check, for an application that reports changes itself
    /// from the operating system's callbacks. Default 5 s.
    pub network_poll: Option<Duration>,
    /// Offer the bound socket addresses to connected peers as hole-punching candidates
    /// (unspecified ones never are). Off keeps them out of the candidate exchange: peers
    /// then punch only towards addresses seen from outside (STUN, agreeing observers, a
    /// port mapping). [`Endpoint::node_addr`](crate::Endpoint::node_addr) still lists
    /// them. Default on.
    pub advertise_bound: bool,
}

impl Default for HolePunchConfig {
    fn default() -> Self {
        Self {
            birthday: true,
            birthday_sockets: 256,
            birthday_probes: 2048,
            birthday_rate: 5000,
            birthday_window: Duration::from_secs(10),
            birthday_attempts: 3,
            stun_refresh: Duration::from_secs(300),
            network_poll: Some(Duration::from_secs(5)),
            advertise_bound: true,
        }
    }
}

/// Limits that bound what peers can make the endpoint do.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Most simultaneous connections (incoming and outgoing, handshakes included).
    /// Incoming connections over the limit are refused; dials fail with
    /// `ConnectError::LimitReached`. Default 1024.
    pub max_connections: usize,
    /// Most concurrent bidirectional streams a peer may open on one connection. Default 128.
    pub max_bi_streams: u32,
    /// Most concurrent unidirectional streams a peer may open on one connection. Default 128.
    pub max_uni_streams: u32,
    /// A peer must send a stream's protocol header within this time or the stream is
    /// refused. Default 5 s.
    pub stream_header_timeout: Duration,
    /// Opening a stream fails with `StreamError::StreamLimit` if the peer grants none
    /// within this time. Default 10 s.
    pub stream_open_timeout: Duration,
    /// Bytes of received datagrams buffered per connection before new ones are dropped.
    /// Default 1 MiB.
    pub datagram_buffer: usize,
    /// Largest frame the built-in protocols accept (see `kith_core::frame`). Default 1 MiB.
    pub max_frame: usize,
    /// Incoming handshakes allowed per second, sustained. Default 64.
    pub handshake_rate: f64,
    /// Incoming handshakes allowed in a burst above the sustained rate. Default 128.
    pub handshake_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_bi_streams: 128,
            max_uni_streams: 128,
            stream_header_timeout: Duration::from_secs(5),
            stream_open_timeout: Duration::from_secs(10),
            datagram_buffer: 1 << 20,
            max_frame: kith_core::frame::DEFAULT_MAX_FRAME,
            handshake_rate: 64.0,
            handshake_burst: 128,
        }
    }
}
