//! NAT-PMP (RFC 6886) and PCP (RFC 6887) messages for UDP mappings: encoders for the
//! requests this client sends and pure, bounded decoders for the answers.
//!
//! The decoders read only fixed offsets of a slice, never allocate and never panic on
//! any input (property-tested and fuzzed through `crate::fuzzing::portmap_*`).

use std::net::{Ipv4Addr, Ipv6Addr};

/// Well-known server port of NAT-PMP and PCP on the gateway.
pub(crate) const SERVER_PORT: u16 = 5351;
/// Largest PCP message (RFC 6887 §7): anything longer is refused unread.
pub(crate) const MAX_PCP_MESSAGE: usize = 1100;

const NATPMP_VERSION: u8 = 0;
const PCP_VERSION: u8 = 2;
const OP_EXTERNAL: u8 = 0;
const OP_MAP_UDP: u8 = 1;
const PCP_OP_MAP: u8 = 1;
const RESPONSE_BIT: u8 = 0x80;
const UDP: u8 = 17;
/// PCP result code for "unsupported version" (the same value as NAT-PMP's).
const UNSUPP_VERSION: u16 = 1;
const PCP_MAP_LEN: usize = 60;

/// Why a NAT-PMP or PCP reply was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("reply has {0} bytes, not the length of its kind")]
    Length(usize),
    #[error("reply has version {0}, expected {1}")]
    Version(u8, u8),
    #[error("reply opcode {0:#04x} does not answer the request")]
    Opcode(u8),
    #[error("gateway refused the request: result code {0}")]
    Refused(u16),
    #[error("reply does not match the request (nonce, protocol or port)")]
    Mismatch,
}

/// NAT-PMP: request the gateway's external IPv4 address.
pub(crate) fn natpmp_external_request() -> [u8; 2] {
    [NATPMP_VERSION, OP_EXTERNAL]
}

/// NAT-PMP: map (or, with `lifetime` 0, delete) the UDP `internal` port.
pub(crate) fn natpmp_map_request(internal: u16, suggested: u16, lifetime: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = NATPMP_VERSION;
    b[1] = OP_MAP_UDP;
    b[4..6].copy_from_slice(&internal.to_be_bytes());
    b[6..8].copy_from_slice(&suggested.to_be_bytes());
    b[8..12].copy_from_slice(&lifetime.to_be_bytes());
    b
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks version, opcode and result of a NAT-PMP reply of exactly `len` bytes.
fn natpmp_header(b: &[u8], op: u8, len: usize) -> Result<(), WireError> {
    if b.len() < 4 {
        return Err(WireError::Length(b.len()));
    }
    if b[0] != NATPMP_VERSION {
        return Err(WireError::Version(b[0], NATPMP_VERSION));
    }
    if b[1] != op | RESPONSE_BIT {
        return Err(WireError::Opcode(b[1]));
    }
    let result = be16(b, 2);
    if result != 0 {
        return Err(WireError::Refused(result));
    }
    if b.len() != len {
        return Err(WireError::Length(b.len()));
    }
    Ok(())
}

/// NAT-PMP external-address reply: the address.
pub(crate) fn decode_natpmp_external(b: &[u8]) -> Result<Ipv4Addr, WireError> {
    natpmp_header(b, OP_EXTERNAL, 12)?;
    Ok(Ipv4Addr::new(b[8], b[9], b[10], b[11]))
}

/// A granted NAT-PMP or PCP mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Granted {
    /// External port (0 in a reply to a delete).
    pub(crate) external_port: u16,
    /// External address (PCP only; NAT-PMP needs a separate request).
    pub(crate) external_ip: Option<Ipv4Addr>,
    /// Lifetime granted, seconds.
    pub(crate) lifetime: u32,
}

/// NAT-PMP map reply for the UDP `internal` port.
pub(crate) fn decode_natpmp_map(b: &[u8], internal: u16) -> Result<Granted, WireError> {
    natpmp_header(b, OP_MAP_UDP, 16)?;
    if be16(b, 8) != internal {
        return Err(WireError::Mismatch);
    }
    Ok(Granted {
        external_port: be16(b, 10),
        external_ip: None,
        lifetime: be32(b, 12),
    })
}

fn mapped(ip: Ipv4Addr) -> [u8; 16] {
    ip.to_ipv6_mapped().octets()
}

/// PCP MAP request for UDP from `client:internal` (with `lifetime` 0: delete).
pub(crate) fn pcp_map_request(
    client: Ipv4Addr,
    nonce: [u8; 12],
    internal: u16,
    suggested_port: u16,
    lifetime: u32,
) -> [u8; PCP_MAP_LEN] {
    let mut b = [0u8; PCP_MAP_LEN];
    b[0] = PCP_VERSION;
    b[1] = PCP_OP_MAP;
    b[4..8].copy_from_slice(&lifetime.to_be_bytes());
    b[8..24].copy_from_slice(&mapped(client));
    b[24..36].copy_from_slice(&nonce);
    b[36] = UDP;
    b[40..42].copy_from_slice(&internal.to_be_bytes());
    b[42..44].copy_from_slice(&suggested_port.to_be_bytes());
    // Suggested external address: "any IPv4" (::ffff:0.0.0.0).
    b[44..60].copy_from_slice(&mapped(Ipv4Addr::UNSPECIFIED));
    b
}

/// What a PCP server said to a MAP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PcpReply {
    /// The mapping (or its deletion) was granted.
    Granted(Granted),
    /// The server speaks only NAT-PMP (a version-0 reply, RFC 6887 §9).
    NatPmpOnly,
}

/// PCP MAP reply to a request with `nonce` for UDP `internal`.
pub(crate) fn decode_pcp_map(
    b: &[u8],
    nonce: &[u8; 12],
    internal: u16,
) -> Result<PcpReply, WireError> {
    if b.len() > MAX_PCP_MESSAGE {
        return Err(WireError::Length(b.len()));
    }
    if b.len() >= 4 && b[0] == NATPMP_VERSION && be16(b, 2) == UNSUPP_VERSION {
        return Ok(PcpReply::NatPmpOnly);
    }
    if b.len() < 4 {
        return Err(WireError::Length(b.len()));
    }
    if b[0] != PCP_VERSION {
        return Err(WireError::Version(b[0], PCP_VERSION));
    }
    if b[1] != PCP_OP_MAP | RESPONSE_BIT {
        return Err(WireError::Opcode(b[1]));
    }
    // PCP result codes are one byte (byte 3); byte 2 is reserved.
    let result = u16::from(b[3]);
    if result == UNSUPP_VERSION {
        return Ok(PcpReply::NatPmpOnly);
    }
    if result != 0 {
        return Err(WireError::Refused(result));
    }
    // A MAP reply is 60 bytes plus options (a multiple of 4); options are ignored.
    if b.len() < PCP_MAP_LEN || b.len() % 4 != 0 {
        return Err(WireError::Length(b.len()));
    }
    if b[24..36] != nonce[..] || b[36] != UDP || be16(b, 40) != internal {
        return Err(WireError::Mismatch);
    }
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[44..60]);
    Ok(PcpReply::Granted(Granted {
        external_port: be16(b, 42),
        external_ip: Ipv6Addr::from(ip).to_ipv4_mapped(),
        lifetime: be32(b, 4),
    }))
}

/// Encoders for the gateway side, used by the loopback responders in tests.
#[cfg(test)]
pub(crate) mod server {
    use super::*;

    pub(crate) fn natpmp_external_reply(result: u16, ip: Ipv4Addr) -> Vec<u8> {
        let mut b = vec![0u8; 12];
        b[1] = OP_EXTERNAL | RESPONSE_BIT;
        b[2..4].copy_from_slice(&result.to_be_bytes());
        b[8..12].copy_from_slice(&ip.octets());
        b
    }

    pub(crate) fn natpmp_map_reply(result: u16, internal: u16, ext: u16, life: u32) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[1] = OP_MAP_UDP | RESPONSE_BIT;
        b[2..4].copy_from_slice(&result.to_be_bytes());
        b[8..10].copy_from_slice(&internal.to_be_bytes());
        b[10..12].copy_from_slice(&ext.to_be_bytes());
        b[12..16].copy_from_slice(&life.to_be_bytes());
        b
    }

    /// Answers a PCP MAP request `req` (as produced by `pcp_map_request`).
    pub(crate) fn pcp_map_reply(
        req: &[u8],
        result: u8,
        ext: (Ipv4Addr, u16),
        life: u32,
    ) -> Vec<u8> {
        let mut b = req[..PCP_MAP_LEN].to_vec();
        b[1] = PCP_OP_MAP | RESPONSE_BIT;
        b[2] = 0;
        b[3] = result;
        b[4..8].copy_from_slice(&life.to_be_bytes());
        b[8..24].fill(0);
        b[42..44].copy_from_slice(&ext.1.to_be_bytes());
        b[44..60].copy_from_slice(&mapped(ext.0));
        b
    }

    /// The (nonce, internal port, suggested port, lifetime) of a PCP MAP request.
    pub(crate) fn parse_pcp_request(b: &[u8]) -> Option<([u8; 12], u16, u16, u32)> {
        if b.len() != PCP_MAP_LEN || b[0] != PCP_VERSION || b[1] != PCP_OP_MAP {
            return None;
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&b[24..36]);
        Some((nonce, be16(b, 40), be16(b, 42), be32(b, 4)))
    }
}

#[cfg(test)]
mod tests {
    use super::server::*;
    use super::*;
    use proptest::prelude::*;

    const NONCE: [u8; 12] = [7; 12];

    #[test]
    fn natpmp_round_trip() {
        let ip = Ipv4Addr::new(203, 0, 113, 16);
        assert_eq!(
            decode_natpmp_external(&natpmp_external_reply(0, ip)),
            Ok(ip)
        );
        let g = decode_natpmp_map(&natpmp_map_reply(0, 4000, 4001, 7200), 4000).unwrap();
        assert_eq!((g.external_port, g.lifetime), (4001, 7200));
        assert_eq!(
            decode_natpmp_map(&natpmp_map_reply(3, 4000, 0, 0), 4000),
            Err(WireError::Refused(3))
        );
        assert_eq!(
            decode_natpmp_map(&natpmp_map_reply(0, 4002, 1, 1), 4000),
            Err(WireError::Mismatch)
        );
        let req = natpmp_map_request(4000, 4000, 60);
        assert_eq!(&req[..2], &[0, 1]);
        assert_eq!(be32(&req, 8), 60);
    }

    #[test]
    fn pcp_round_trip() {
        let client = Ipv4Addr::new(192, 0, 2, 2);
        let req = pcp_map_request(client, NONCE, 4000, 4000, 7200);
        assert_eq!(parse_pcp_request(&req), Some((NONCE, 4000, 4000, 7200)));
        assert_eq!(&req[8..24], &mapped(client));
        let ext = (Ipv4Addr::new(203, 0, 113, 16), 4444);
        let reply = pcp_map_reply(&req, 0, ext, 3600);
        assert_eq!(
            decode_pcp_map(&reply, &NONCE, 4000),
            Ok(PcpReply::Granted(Granted {
                external_port: 4444,
                external_ip: Some(ext.0),
                lifetime: 3600
            }))
        );
        assert_eq!(
            decode_pcp_map(&reply, &[8; 12], 4000),
            Err(WireError::Mismatch)
        );
        assert_eq!(
            decode_pcp_map(&pcp_map_reply(&req, 2, ext, 0), &NONCE, 4000),
            Err(WireError::Refused(2))
        );
        // A NAT-PMP-only gateway answers a version-2 request with version 0, result 1.
        assert_eq!(
            decode_pcp_map(&[0, 0x81, 0, 1, 0, 0, 0, 0], &NONCE, 4000),
            Ok(PcpReply::NatPmpOnly)
        );
        let mut long = reply.clone();
        long.resize(MAX_PCP_MESSAGE + 4, 0);
        assert_eq!(
            decode_pcp_map(&long, &NONCE, 4000),
            Err(WireError::Length(MAX_PCP_MESSAGE + 4))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, rng_seed: proptest::test_runner::RngSeed::Fixed(0x6b697468), ..ProptestConfig::default() })]

        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..1200), port in any::<u16>()) {
            let _ = decode_natpmp_external(&b);
            let _ = decode_natpmp_map(&b, port);
            let _ = decode_pcp_map(&b, &NONCE, port);
        }

        #[test]
        fn pcp_grant_round_trips(ip in any::<u32>(), ext in any::<u16>(), life in any::<u32>(), internal in any::<u16>(), nonce in any::<[u8; 12]>()) {
            let req = pcp_map_request(Ipv4Addr::new(192, 0, 2, 2), nonce, internal, 0, life);
            let ip = Ipv4Addr::from(ip);
            let got = decode_pcp_map(&pcp_map_reply(&req, 0, (ip, ext), life), &nonce, internal);
            prop_assert_eq!(got, Ok(PcpReply::Granted(Granted { external_port: ext, external_ip: Some(ip), lifetime: life })));
        }

        #[test]
        fn natpmp_grant_round_trips(internal in any::<u16>(), ext in any::<u16>(), life in any::<u32>()) {
            let got = decode_natpmp_map(&natpmp_map_reply(0, internal, ext, life), internal);
            prop_assert_eq!(got, Ok(Granted { external_port: ext, external_ip: None, lifetime: life }));
        }
    }
}
