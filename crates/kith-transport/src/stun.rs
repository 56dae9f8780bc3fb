//! A STUN client (RFC 8489 Binding) and NAT mapping classification.
//!
//! The codec is sans-IO: [`binding_request`] builds a request, [`parse_binding_response`]
//! validates a response and returns the mapped address. The endpoint sends requests
//! from the same UDP socket QUIC uses (so the mapping observed is the one peers see) and
//! tells responses apart from QUIC and probes by their first byte (STUN messages start
//! with two zero bits, QUIC packets have bit 0x40 set, probes start with 0x00 and carry
//! no STUN magic cookie).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The STUN magic cookie (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// Largest STUN response accepted.
pub const MAX_STUN_MESSAGE: usize = 1024;

/// Error decoding a STUN response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Shorter than a STUN header, not 4-byte aligned, or longer than its header says.
    #[error("malformed STUN message")]
    Malformed,
    /// Not a Binding success response.
    #[error("not a STUN binding success response (type {0:#06x})")]
    NotSuccess(u16),
    /// The transaction id does not match the request.
    #[error("STUN transaction id mismatch")]
    WrongTransaction,
    /// The response carries no (XOR-)MAPPED-ADDRESS.
    #[error("STUN response has no mapped address")]
    NoAddress,
    /// The server did not answer in time.
    #[error("STUN server did not answer")]
    TimedOut,
    /// No socket of the server's address family is bound.
    #[error("no socket for the STUN server's address family")]
    NoSocket,
}

/// When to send, and when to give up on, one STUN request over UDP: RFC 8489 §6.2.1.
///
/// Sans-IO: the first transmission is due at once; each retransmission waits twice as
/// long as the one before (RTO, 2 RTO, 4 RTO, …), up to `rc` transmissions in all; after
/// the last the client waits `rm` × RTO more and then gives up. With the RFC's defaults
/// (RTO 500 ms, Rc 7, Rm 16) requests go out at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s
/// and the transaction fails at 39.5 s. A response to any of the transmissions (they
/// share the transaction id) ends it.
#[derive(Debug, Clone)]
pub struct Retransmit {
    rto: std::time::Duration,
    rc: u32,
    rm: u32,
    sent: u32,
    next: std::time::Instant,
}

impl Retransmit {
    /// RFC 8489's defaults: RTO 500 ms, Rc 7, Rm 16.
    pub fn rfc8489(now: std::time::Instant) -> Self {
        Self::new(now, std::time::Duration::from_millis(500), 7, 16)
    }

    /// A schedule starting at `now` with initial `rto`, `rc` transmissions at most and a
    /// final wait of `rm` × the initial RTO.
    pub fn new(now: std::time::Instant, rto: std::time::Duration, rc: u32, rm: u32) -> Self {
        Self {
            rto,
            rc: rc.max(1),
            rm,
            sent: 0,
            next: now,
        }
    }

    /// Whether a transmission is due at `now`; if so it counts as sent.
    pub fn poll_transmit(&mut self, now: std::time::Instant) -> bool {
        if self.sent >= self.rc || now < self.next {
            return false;
        }
        self.sent += 1;
        self.next = if self.sent < self.rc {
            // The wait after transmission k (1-based) is 2^(k-1) RTO.
            now + self.rto * (1u32 << (self.sent - 1).min(16))
        } else {
            now + self.rto * self.rm
        };
        true
    }

    /// When [`poll_transmit`](Self::poll_transmit) is due next, or (after the last
    /// transmission) when the transaction fails.
    pub fn poll_timeout(&self) -> std::time::Instant {
        self.next
    }

    /// Whether the transaction has failed at `now` (every transmission sent, the final
    /// wait over).
    pub fn failed(&self, now: std::time::Instant) -> bool {
        self.sent >= self.rc && now >= self.next
    }

    /// Transmissions sent so far.
    pub fn sent(&self) -> u32 {
        self.sent
    }
}

/// True if `data` looks like a STUN message (RFC 8489 §5: two leading zero bits and the
/// magic cookie).
pub fn is_stun(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] & 0xc0 == 0 && data[4..8] == MAGIC_COOKIE.to_be_bytes()
}

/// A Binding request with transaction id `tx` (no attributes).
pub fn binding_request(tx: [u8; 12]) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(&tx);
    out
}

/// The transaction id of a STUN message (`data` must satisfy [`is_stun`]).
pub fn transaction_id(data: &[u8]) -> Option<[u8; 12]> {
    data.get(8..20)?.try_into().ok()
}

/// Validates a Binding success response to transaction `tx` and returns the mapped
/// address (XOR-MAPPED-ADDRESS preferred over the legacy MAPPED-ADDRESS).
pub fn parse_binding_response(data: &[u8], tx: &[u8; 12]) -> Result<SocketAddr, StunError> {
    if data.len() > MAX_STUN_MESSAGE || !is_stun(data) {
        return Err(StunError::Malformed);
    }
    let ty = u16::from_be_bytes([data[0], data[1]]);
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    if len % 4 != 0 || 20 + len != data.len() {
        return Err(StunError::Malformed);
    }
    if ty != BINDING_SUCCESS {
        return Err(StunError::NotSuccess(ty));
    }
    if &data[8..20] != tx {
        return Err(StunError::WrongTransaction);
    }
    let mut attrs = &data[20..];
    let mut mapped = None;
    let mut xor_mapped = None;
    while !attrs.is_empty() {
        if attrs.len() < 4 {
            return Err(StunError::Malformed);
        }
        let at = u16::from_be_bytes([attrs[0], attrs[1]]);
        let alen = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let padded = alen.div_ceil(4) * 4;
        let value = attrs.get(4..4 + alen).ok_or(StunError::Malformed)?;
        match at {
            ATTR_XOR_MAPPED_ADDRESS => xor_mapped = Some(decode_address(value, Some(tx))?),
            ATTR_MAPPED_ADDRESS => mapped = Some(decode_address(value, None)?),
            _ => {}
        }
        attrs = attrs.get(4 + padded..).ok_or(StunError::Malformed)?;
    }
    xor_mapped.or(mapped).ok_or(StunError::NoAddress)
}

/// Decodes a (XOR-)MAPPED-ADDRESS value; `xor` carries the transaction id when the value
/// is XORed (RFC 8489 §14.2).
fn decode_address(v: &[u8], xor: Option<&[u8; 12]>) -> Result<SocketAddr, StunError> {
    if v.len() < 4 {
        return Err(StunError::Malformed);
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip: IpAddr = match (v[1], v.len()) {
        (0x01, 8) => {
            let mut b = [v[4], v[5], v[6], v[7]];
            if xor.is_some() {
                for (x, c) in b.iter_mut().zip(cookie) {
                    *x ^= c;
                }
            }
            Ipv4Addr::from(b).into()
        }
        (0x02, 20) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&v[4..20]);
            if let Some(tx) = xor {
                let key: Vec<u8> = cookie.iter().chain(tx.iter()).copied().collect();
                for (x, k) in b.iter_mut().zip(key) {
                    *x ^= k;
                }
            }
            Ipv6Addr::from(b).into()
        }
        _ => return Err(StunError::Malformed),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Encodes a Binding success response to `tx` reporting `mapped` (XOR-MAPPED-ADDRESS):
/// what a STUN server sends. Used by kith's tests and the NAT lab's reflector.
pub fn binding_response(tx: &[u8; 12], mapped: SocketAddr) -> Vec<u8> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let (family, addr): (u8, Vec<u8>) = match mapped.ip() {
        IpAddr::V4(ip) => (
            1,
            ip.octets().iter().zip(cookie).map(|(a, c)| a ^ c).collect(),
        ),
        IpAddr::V6(ip) => {
            let key: Vec<u8> = cookie.iter().chain(tx.iter()).copied().collect();
            (2, ip.octets().iter().zip(key).map(|(a, k)| a ^ k).collect())
        }
    };
    let value_len = 4 + addr.len();
    let mut out = Vec::with_capacity(20 + 4 + value_len);
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&((4 + value_len) as u16).to_be_bytes());
    out.extend_from_slice(&cookie);
    out.extend_from_slice(tx);
    out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(value_len as u16).to_be_bytes());
    out.push(0);
    out.push(family);
    out.extend_from_slice(&(mapped.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    out.extend_from_slice(&addr);
    out
}

/// How a NAT in front of this node maps its UDP socket, judged from what several
/// observers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Observers see the socket's own address: no NAT.
    Public,
    /// Every observer sees the same mapped address: hole punching works with anyone.
    EndpointIndependent,
    /// Observers see different mapped ports: a new mapping per destination.
    EndpointDependent,
    /// Fewer than two observers answered.
    Unknown,
}

/// Classifies the mapping from `(observer, mapped address)` reports for a socket bound
/// to `local`.
pub fn classify(local: SocketAddr, reports: &[(SocketAddr, SocketAddr)]) -> NatKind {
    let mut observers: Vec<SocketAddr> = reports.iter().map(|r| r.0).collect();
    observers.sort();
    observers.dedup();
    if observers.len() < 2 {
        return NatKind::Unknown;
    }
    let first = reports[0].1;
    if reports.iter().all(|r| r.1 == first) {
        if first == local {
            NatKind::Public
        } else {
            NatKind::EndpointIndependent
        }
    } else {
        NatKind::EndpointDependent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmissions_follow_rfc8489() {
        use std::time::Duration;
        let t0 = std::time::Instant::now();
        let mut r = Retransmit::rfc8489(t0);
        let mut sent_at = Vec::new();
        let mut now = t0;
        while !r.failed(now) {
            if r.poll_transmit(now) {
                sent_at.push(now.duration_since(t0).as_millis());
            }
            assert!(!r.poll_transmit(now), "one transmission per due time");
            now = r.poll_timeout();
        }
        assert_eq!(sent_at, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(now.duration_since(t0), Duration::from_millis(39_500));
        assert_eq!(r.sent(), 7);
        // Nothing is sent after the last, and it stays failed.
        assert!(!r.poll_transmit(now + Duration::from_secs(100)));
        assert!(r.failed(now + Duration::from_secs(100)));
    }
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn request_is_a_binding_request() {
        let r = binding_request([7; 12]);
        assert!(is_stun(&r));
        assert_eq!(&r[0..4], &[0, 1, 0, 0]);
        assert_eq!(transaction_id(&r), Some([7; 12]));
    }

    #[test]
    fn responses_round_trip_v4_and_v6() {
        for mapped in [sa("203.0.113.7:40000"), sa("[2001:db8::1]:5")] {
            let resp = binding_response(&[3; 12], mapped);
            assert_eq!(parse_binding_response(&resp, &[3; 12]), Ok(mapped));
            assert_eq!(
                parse_binding_response(&resp, &[4; 12]),
                Err(StunError::WrongTransaction)
            );
        }
    }

    #[test]
    fn xor_encoding_matches_rfc_8489() {
        // 192.0.2.1:32853 XORed with the cookie, as in RFC 5769's IPv4 sample:
        // X-Port 0xa147, X-Address 0xe112a643.
        let resp = binding_response(&[0; 12], sa("192.0.2.1:32853"));
        assert_eq!(
            &resp[24..32],
            &[0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
    }

    #[test]
    fn legacy_mapped_address_and_errors() {
        // MAPPED-ADDRESS (not XORed), 198.51.100.2:1234.
        let mut m = vec![0x01, 0x01, 0x00, 0x0c];
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[9; 12]);
        m.extend_from_slice(&[
            0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x04, 0xd2, 198, 51, 100, 2,
        ]);
        assert_eq!(
            parse_binding_response(&m, &[9; 12]),
            Ok(sa("198.51.100.2:1234"))
        );
        let mut err = m.clone();
        err[1] = 0x11; // Binding error response
        assert_eq!(
            parse_binding_response(&err, &[9; 12]),
            Err(StunError::NotSuccess(0x0111))
        );
        let mut short = m.clone();
        short.truncate(30);
        assert_eq!(
            parse_binding_response(&short, &[9; 12]),
            Err(StunError::Malformed)
        );
        let empty = binding_request([9; 12]);
        let mut ok_empty = empty.to_vec();
        ok_empty[1] = 0x01;
        ok_empty[0] = 0x01;
        assert_eq!(
            parse_binding_response(&ok_empty, &[9; 12]),
            Err(StunError::NoAddress)
        );
    }

    #[test]
    fn classification() {
        let local = sa("192.0.2.2:5000");
        let o1 = sa("203.0.113.2:3478");
        let o2 = sa("203.0.113.3:3478");
        let m = sa("203.0.113.16:40000");
        assert_eq!(classify(local, &[(o1, m)]), NatKind::Unknown);
        assert_eq!(
            classify(local, &[(o1, m), (o2, m)]),
            NatKind::EndpointIndependent
        );
        assert_eq!(
            classify(local, &[(o1, m), (o2, sa("203.0.113.16:40001"))]),
            NatKind::EndpointDependent
        );
        assert_eq!(
            classify(local, &[(o1, local), (o2, local)]),
            NatKind::Public
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), tx in any::<[u8; 12]>()) {
            let _ = parse_binding_response(&data, &tx);
        }

        #[test]
        fn any_mapped_address_round_trips(ip in any::<[u8; 4]>(), port in any::<u16>(), tx in any::<[u8; 12]>()) {
            let mapped = SocketAddr::new(Ipv4Addr::from(ip).into(), port);
            prop_assert_eq!(parse_binding_response(&binding_response(&tx, mapped), &tx), Ok(mapped));
        }
    }
}
