//! Length-delimited framing for prost messages on streams.
//!
//! A frame is a protobuf varint length (at most 5 bytes, so at most `u32::MAX`)
//! followed by that many bytes. Every decoder takes a hard cap and checks the
//! announced length against it **before** allocating or reading the body.
//!
//! [`FrameDecoder`] is the sans-IO decoder over a byte buffer; [`read_frame`] and
//! [`write_frame`] are the async helpers for streams.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default cap on one frame: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Longest varint length prefix accepted (5 bytes = 35 bits, enough for `u32`).
const MAX_PREFIX: usize = 5;

/// Error reading or writing a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced (or, when writing, actual) length exceeds the cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// Configured cap.
        max: usize,
    },
    /// The length prefix is not a valid varint of at most 5 bytes.
    #[error("invalid frame length prefix")]
    InvalidLength,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes the frame announced (prefix included once known).
        expected: usize,
    },
    /// The frame body is not a valid message of the expected type.
    #[error("frame body does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// An I/O error on the underlying stream.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result of looking at the start of a buffer for a length prefix.
enum Prefix {
    /// Need more bytes to know the length.
    Incomplete,
    /// The prefix is `width` bytes long and announces `len` bytes.
    Complete { width: usize, len: u64 },
}

fn parse_prefix(buf: &[u8]) -> Result<Prefix, FrameError> {
    let mut len: u64 = 0;
    for (i, &b) in buf.iter().take(MAX_PREFIX).enumerate() {
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // Reject non-minimal encodings (a trailing zero byte), so one frame has one encoding.
            if i > 0 && b == 0 {
                return Err(FrameError::InvalidLength);
            }
            return Ok(Prefix::Complete { width: i + 1, len });
        }
    }
    if buf.len() >= MAX_PREFIX {
        Err(FrameError::InvalidLength)
    } else {
        Ok(Prefix::Incomplete)
    }
}

fn check_len(len: u64, max: usize) -> Result<usize, FrameError> {
    match usize::try_from(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(FrameError::TooLarge { len, max }),
    }
}

/// Sans-IO frame decoder: feed bytes into a [`BytesMut`], take whole frames out.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max: usize,
}

impl FrameDecoder {
    /// A decoder that rejects frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }

    /// Takes one whole frame body from the front of `buf`, if one is there.
    ///
    /// Returns `Ok(None)` when more bytes are needed; nothing is consumed then.
    /// An oversized or malformed prefix is an error as soon as the prefix is seen,
    /// before any of the body is buffered.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match parse_prefix(buf)? {
            Prefix::Incomplete => Ok(None),
            Prefix::Complete { width, len } => {
                let len = check_len(len, self.max)?;
                if buf.len() < width + len {
                    buf.reserve(width + len - buf.len());
                    return Ok(None);
                }
                buf.advance(width);
                Ok(Some(buf.split_to(len).freeze()))
            }
        }
    }

    /// Checks that a finished stream left no partial frame behind.
    pub fn finish(&self, buf: &BytesMut) -> Result<(), FrameError> {
        if buf.is_empty() {
            return Ok(());
        }
        let expected = match parse_prefix(buf) {
            Ok(Prefix::Complete { width, len }) => width.saturating_add(len as usize),
            _ => buf.len() + 1,
        };
        Err(FrameError::Truncated {
            got: buf.len(),
            expected,
        })
    }
}

/// Encodes `msg` as one frame, refusing messages over `max` bytes.
pub fn encode_frame<M: prost::Message>(msg: &M, max: usize) -> Result<Bytes, FrameError> {
    let len = msg.encoded_len();
    if len > max || len > u32::MAX as usize {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    let mut out = BytesMut::with_capacity(len + MAX_PREFIX);
    put_prefix(&mut out, len);
    // encode_raw cannot fail: the buffer was reserved for encoded_len bytes.
    msg.encode_raw(&mut out);
    Ok(out.freeze())
}

/// Frames a body that is not a protobuf message (a protocol with its own fixed layout,
/// such as the relay's frames): the varint length prefix, then `body`. The reader
/// ([`read_frame`], [`FrameDecoder`]) enforces its cap as for any frame.
pub fn frame_raw(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + MAX_PREFIX);
    put_prefix(&mut out, body.len());
    out.put_slice(body);
    out.freeze()
}

fn put_prefix(out: &mut impl BufMut, mut len: usize) {
    while len >= 0x80 {
        out.put_u8((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.put_u8(len as u8);
}

/// Reads one frame body from `reader`.
///
/// Returns `Ok(None)` on a clean end of stream before the first byte of a frame.
/// The announced length is checked against `max` before the body is allocated.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut prefix = [0u8; MAX_PREFIX];
    let mut n = 0;
    let (width, len) = loop {
        let got = reader.read(&mut prefix[n..n + 1]).await?;
        if got == 0 {
            if n == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                got: n,
                expected: n + 1,
            });
        }
        n += 1;
        match parse_prefix(&prefix[..n])? {
            Prefix::Incomplete => continue,
            Prefix::Complete { width, len } => break (width, len),
        }
    };
    let len = check_len(len, max)?;
    // The buffer grows with the bytes that arrive, never on the prefix's word alone: a
    // peer that announces a large frame and sends little makes us hold at most about
    // three times what it sent (while the buffer doubles), plus one read step.
    let mut body: Vec<u8> = Vec::new();
    let mut step = vec![0u8; len.min(READ_STEP)];
    while body.len() < len {
        let want = (len - body.len()).min(step.len());
        let got = reader.read(&mut step[..want]).await?;
        if got == 0 {
            return Err(FrameError::Truncated {
                got: width + body.len(),
                expected: width + len,
            });
        }
        append_grown(&mut body, &step[..got], len);
    }
    Ok(Some(Bytes::from(body)))
}

/// Appends `got` to a frame body of announced length `len`, doubling the buffer as bytes
/// arrive but never past `len`.
fn append_grown(body: &mut Vec<u8>, got: &[u8], len: usize) {
    if body.capacity() < body.len() + got.len() {
        let target = (body.capacity() * 2).max(body.len() + got.len()).min(len);
        body.reserve_exact(target - body.len());
    }
    body.extend_from_slice(got);
}

/// [`read_frame`] from a blocking reader (a buffered one: the prefix is read a byte at a
/// time), with the same checks: the length is checked against `max` before anything is
/// allocated, and the body grows with the bytes that arrive.
pub fn read_frame_blocking<R: std::io::Read + ?Sized>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut prefix = [0u8; MAX_PREFIX];
    let mut n = 0;
    let (width, len) = loop {
        if reader.read(&mut prefix[n..n + 1])? == 0 {
            if n == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                got: n,
                expected: n + 1,
            });
        }
        n += 1;
        if let Prefix::Complete { width, len } = parse_prefix(&prefix[..n])? {
            break (width, len);
        }
    };
    let len = check_len(len, max)?;
    let mut body: Vec<u8> = Vec::new();
    let mut step = vec![0u8; len.min(READ_STEP)];
    while body.len() < len {
        let want = (len - body.len()).min(step.len());
        let got = reader.read(&mut step[..want])?;
        if got == 0 {
            return Err(FrameError::Truncated {
                got: width + body.len(),
                expected: width + len,
            });
        }
        append_grown(&mut body, &step[..got], len);
    }
    Ok(Some(Bytes::from(body)))
}

/// Bytes read at once into a frame's buffer.
const READ_STEP: usize = 16 * 1024;

/// Reads one frame and decodes it as `M`. `Ok(None)` on a clean end of stream.
pub async fn read_message<M: prost::Message + Default, R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    max: usize,
) -> Result<Option<M>, FrameError> {
    match read_frame(reader, max).await? {
        Some(body) => Ok(Some(M::decode(body)?)),
        None => Ok(None),
    }
}

/// Encodes `msg` as one frame (refusing it if over `max`) and writes it to `writer`.
pub async fn write_frame<M: prost::Message, W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    msg: &M,
    max: usize,
) -> Result<(), FrameError> {
    let frame = encode_frame(msg, max)?;
    writer.write_all(&frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_bytes(body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_prefix(&mut out, body.len());
        out.extend_from_slice(body);
        out.to_vec()
    }

    #[test]
    fn oversized_prefix_rejected_before_body_arrives() {
        let dec = FrameDecoder::new(16);
        // Announces 1 GiB; only the prefix is present.
        let mut buf = BytesMut::from(&frame_bytes(&[])[..0]);
        put_prefix(&mut buf, 1 << 30);
        let cap_before = buf.capacity();
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::TooLarge { len, max: 16 }) if len == 1 << 30
        ));
        assert_eq!(
            buf.capacity(),
            cap_before,
            "no allocation for a rejected frame"
        );
    }

    #[test]
    fn the_blocking_reader_reads_what_the_async_one_does() {
        let mut bytes = frame_bytes(b"hello");
        bytes.extend(frame_bytes(b""));
        let mut r = &bytes[..];
        assert_eq!(
            &read_frame_blocking(&mut r, 16).unwrap().unwrap()[..],
            b"hello"
        );
        assert!(read_frame_blocking(&mut r, 16).unwrap().unwrap().is_empty());
        assert!(read_frame_blocking(&mut r, 16).unwrap().is_none());
        // Over the cap: refused on the prefix alone; cut short: truncated.
        assert!(matches!(
            read_frame_blocking(&mut &frame_bytes(&[0; 17])[..], 16),
            Err(FrameError::TooLarge { .. })
        ));
        let cut = frame_bytes(b"hello");
        assert!(matches!(
            read_frame_blocking(&mut &cut[..3], 16),
            Err(FrameError::Truncated { .. })
        ));
    }

    #[test]
    fn raw_frames_decode_like_any_frame() {
        let dec = FrameDecoder::new(1 << 20);
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut buf = BytesMut::from(&frame_raw(&body)[..]);
            let got = dec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(&got[..], &body[..]);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn overlong_prefix_is_invalid() {
        let dec = FrameDecoder::new(usize::MAX);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::InvalidLength)
        ));
        let mut nonminimal = BytesMut::from(&[0x81, 0x00][..]);
        assert!(matches!(
            dec.decode(&mut nonminimal),
            Err(FrameError::InvalidLength)
        ));
    }

    #[tokio::test]
    async fn async_read_checks_cap_and_truncation() {
        let big = frame_bytes(&[7u8; 100]);
        let mut r = &big[..];
        assert!(matches!(
            read_frame(&mut r, 99).await,
            Err(FrameError::TooLarge { len: 100, max: 99 })
        ));
        let mut r = &big[..50];
        assert!(matches!(
            read_frame(&mut r, 1000).await,
            Err(FrameError::Truncated {
                got: 50,
                expected: 101
            })
        ));
        let mut r = &big[..];
        assert_eq!(
            read_frame(&mut r, 100)
                .await
                .ok()
                .flatten()
                .map(|b| b.len()),
            Some(100)
        );
        assert!(matches!(read_frame(&mut r, 100).await, Ok(None)));
    }

    #[tokio::test]
    async fn write_refuses_oversized_message() {
        let msg = crate::addr::wire::NodeAddrMsg {
            node_id: vec![0; 200].into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        assert!(matches!(
            write_frame(&mut out, &msg, 64).await,
            Err(FrameError::TooLarge { max: 64, .. })
        ));
        assert!(out.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any sequence of frames, fed in any split, decodes back to the same bodies.
        #[test]
        fn round_trip_any_split(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            split in 1usize..64,
        ) {
            let wire: Vec<u8> = bodies.iter().flat_map(|b| frame_bytes(b)).collect();
            let dec = FrameDecoder::new(300);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in wire.chunks(split) {
                buf.extend_from_slice(chunk);
                while let Some(f) = dec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                    out.push(f.to_vec());
                }
            }
            prop_assert!(dec.finish(&buf).is_ok());
            prop_assert_eq!(out, bodies);
        }

        /// Garbage never panics and never yields a frame over the cap.
        #[test]
        fn garbage_is_safe(data in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..256) {
            let dec = FrameDecoder::new(max);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(f)) = dec.decode(&mut buf) {
                prop_assert!(f.len() <= max);
            }
        }

        /// A truncated stream is reported as truncated, never as a shorter frame.
        #[test]
        fn truncation_detected(body in proptest::collection::vec(any::<u8>(), 1..300), cut in 1usize..300) {
            let wire = frame_bytes(&body);
            let cut = cut.min(wire.len() - 1);
            let dec = FrameDecoder::new(1000);
            let mut buf = BytesMut::from(&wire[..cut]);
            prop_assert!(matches!(dec.decode(&mut buf), Ok(None)));
            let truncated = matches!(dec.finish(&buf), Err(FrameError::Truncated { .. }));
            prop_assert!(truncated);
        }
    }
}
