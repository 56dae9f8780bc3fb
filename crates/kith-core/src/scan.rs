//! Counting repeated fields of protobuf wire data before decoding it, without
//! allocating: a decoder rejects a message that holds more entries than its type allows
//! before prost materialises them (an empty entry costs a peer two bytes on the wire and
//! us a whole structure in memory).

/// Errors of [`count`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The bytes are not protobuf wire data (bad varint, unknown wire type, a length past
    /// the end).
    #[error("malformed protobuf wire data")]
    Malformed,
}

/// Field `field` as a length-delimited value (wire type 2) holding `inner`: the form
/// [`count`] walks into, for building frames by hand (tests, fuzz seeds).
///
/// ```
/// let entry = kith_core::scan::length_delimited(1, &[]);
/// let msg = kith_core::scan::length_delimited(3, &entry.repeat(2));
/// assert_eq!(kith_core::scan::count(&msg, &[3], 1), Ok(2));
/// ```
pub fn length_delimited(field: u32, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(inner.len() + 12);
    for mut v in [u64::from(field) << 3 | 2, inner.len() as u64] {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    out.extend_from_slice(inner);
    out
}

fn varint(buf: &mut &[u8]) -> Result<u64, ScanError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or(ScanError::Malformed)?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ScanError::Malformed)
}

fn take<'a>(buf: &mut &'a [u8], n: u64) -> Result<&'a [u8], ScanError> {
    let n = usize::try_from(n).map_err(|_| ScanError::Malformed)?;
    if n > buf.len() {
        return Err(ScanError::Malformed);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// Counts the occurrences of field number `field` in the embedded messages that `path`
/// leads to from the message `buf` (each step a field number; every occurrence of a step
/// is entered, as decoders merge repeated occurrences of an embedded message). An empty
/// path counts in `buf` itself. Reads every byte at most once per path step; allocates
/// nothing.
///
/// ```
/// // Field 3 holding two entries of field 1.
/// let msg = [0x1a, 0x04, 0x0a, 0x00, 0x0a, 0x00];
/// assert_eq!(kith_core::scan::count(&msg, &[3], 1), Ok(2));
/// assert_eq!(kith_core::scan::count(&msg, &[], 3), Ok(1));
/// ```
pub fn count(buf: &[u8], path: &[u32], field: u32) -> Result<usize, ScanError> {
    walk(buf, path, field, false)
}

/// [`count`] for a repeated varint field, packed or not: each varint of a packed run
/// counts (what decoding materialises).
pub fn count_varints(buf: &[u8], path: &[u32], field: u32) -> Result<usize, ScanError> {
    walk(buf, path, field, true)
}

fn walk(mut buf: &[u8], path: &[u32], field: u32, packed: bool) -> Result<usize, ScanError> {
    let mut n = 0usize;
    while !buf.is_empty() {
        let tag = varint(&mut buf)?;
        let number = tag >> 3;
        match tag & 7 {
            0 => {
                varint(&mut buf)?;
                if path.is_empty() && number == u64::from(field) {
                    n += 1;
                }
            }
            1 => {
                take(&mut buf, 8)?;
                if path.is_empty() && number == u64::from(field) {
                    n += 1;
                }
            }
            5 => {
                take(&mut buf, 4)?;
                if path.is_empty() && number == u64::from(field) {
                    n += 1;
                }
            }
            2 => {
                let len = varint(&mut buf)?;
                let value = take(&mut buf, len)?;
                match path.split_first() {
                    None if number == u64::from(field) => {
                        n += if packed {
                            value.iter().filter(|b| *b & 0x80 == 0).count()
                        } else {
                            1
                        };
                    }
                    Some((&step, rest)) if number == u64::from(step) => {
                        n = n.saturating_add(walk(value, rest, field, packed)?);
                    }
                    _ => {}
                }
            }
            _ => return Err(ScanError::Malformed),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_nested_merged_and_packed_fields() {
        // Field 21 twice (merged by decoders), holding 2 and 1 entries of field 1.
        let msg = [
            0xaa, 0x01, 0x04, 0x0a, 0x00, 0x0a, 0x00, 0xaa, 0x01, 0x02, 0x0a, 0x00,
        ];
        assert_eq!(count(&msg, &[21], 1), Ok(3));
        assert_eq!(count(&msg, &[21], 2), Ok(0));
        assert_eq!(count(&msg, &[22], 1), Ok(0));
        // Field 2 packed: varints 1, 300, 5; as an occurrence it is one.
        let packed = [0x12, 0x04, 0x01, 0xac, 0x02, 0x05];
        assert_eq!(count_varints(&packed, &[], 2), Ok(3));
        assert_eq!(count(&packed, &[], 2), Ok(1));
        // Scalars of every wire type.
        let scalars = [
            0x08, 0x96, 0x01, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0x1d, 0, 0, 0, 0,
        ];
        assert_eq!(count(&scalars, &[], 1), Ok(1));
        assert_eq!(count(&scalars, &[], 2), Ok(1));
        assert_eq!(count(&scalars, &[], 3), Ok(1));
        // Malformed: a length past the end, a group, a runaway varint.
        assert_eq!(
            count(&[0x0a, 0x05, 0x00], &[], 1),
            Err(ScanError::Malformed)
        );
        assert_eq!(count(&[0x0b], &[], 1), Err(ScanError::Malformed));
        assert_eq!(count(&[0x08; 11], &[], 1), Err(ScanError::Malformed));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5ca7),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), f in 0u32..40) {
            let _ = count(&bytes, &[f], 1);
            let _ = count(&bytes, &[], f);
        }
    }
}
