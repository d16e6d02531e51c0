//! Byte strings in snapshot files, written and read in bulk with exactly the bytes bincode gives
//! for `Vec<u8>` (a little-endian u64 length, then the bytes): serde encodes a `Vec<u8>` one byte
//! at a time, which made encoding and restoring large state several times slower than the copy.
//!
//! So files written before this module and after it are the same format.

use bytes::Bytes;

/// A frame that does not fit the bytes (a truncated or foreign file).
#[derive(Debug, thiserror::Error)]
#[error("truncated or malformed state data at byte {at}: {what}")]
pub struct FrameError {
    /// Offset where reading failed.
    pub at: usize,
    /// What was being read.
    pub what: &'static str,
}

/// Append what `f` writes, preceded by its length: the encoding of a `Vec<u8>` of those bytes.
pub fn write_framed<E>(
    out: &mut Vec<u8>,
    f: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let at = out.len();
    out.extend_from_slice(&[0; 8]);
    f(out)?;
    let len = (out.len() - at - 8) as u64;
    out[at..at + 8].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Append `bytes` as a `Vec<u8>` (or `String`) would be encoded.
pub fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Append a u64 (a sequence length) or u32 as bincode does.
pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Append a u32 as bincode does.
pub fn write_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Reads frames from a byte slice.
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Read from the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(FrameError { at: self.at, what })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    /// A u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    /// A u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], FrameError> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| FrameError { at: self.at, what })?;
        self.take(len, what)
    }
    /// A sequence length, checked against what is left (each element takes at least `min_size`).
    pub fn len(&mut self, min_size: usize, what: &'static str) -> Result<usize, FrameError> {
        let at = self.at;
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(min_size.max(1) as u64) > left {
            return Err(FrameError { at, what });
        }
        Ok(n as usize)
    }
    /// Everything not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }
    /// True when everything was read.
    pub fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

/// Append `(u32, bytes)` pairs as bincode encodes a `Vec<(u32, Vec<u8>)>`.
pub fn write_groups<B: AsRef<[u8]>>(out: &mut Vec<u8>, groups: &[(u32, B)]) {
    write_u64(out, groups.len() as u64);
    for (kg, bytes) in groups {
        write_u32(out, *kg);
        write_bytes(out, bytes.as_ref());
    }
}

/// Read what [`write_groups`] wrote.
///
/// `source` is the buffer `r` reads: each group's bytes are a slice of it, not a copy.
pub fn read_groups(r: &mut Reader<'_>, source: &Bytes) -> Result<Vec<(u32, Bytes)>, FrameError> {
    let n = r.len(12, "key group count")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kg = r.u32("key group")?;
        out.push((kg, source.slice_ref(r.bytes("key group bytes")?)));
    }
    Ok(out)
}

/// Append byte strings as bincode encodes a `Vec<Vec<u8>>`.
pub fn write_list(out: &mut Vec<u8>, entries: &[Vec<u8>]) {
    write_u64(out, entries.len() as u64);
    for e in entries {
        write_bytes(out, e);
    }
}

/// Read what [`write_list`] wrote.
pub fn read_list(r: &mut Reader<'_>) -> Result<Vec<Vec<u8>>, FrameError> {
    let n = r.len(8, "list length")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.bytes("list entry")?.to_vec());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_the_bincode_encoding() {
        let groups = vec![(3u32, vec![1u8, 2, 3]), (9, vec![]), (11, vec![7; 300])];
        let list = vec![vec![5u8; 10], vec![]];
        let mut out = Vec::new();
        write_groups(&mut out, &groups);
        write_list(&mut out, &list);
        write_framed(&mut out, |o| {
            write_bytes(o, b"name");
            Ok::<_, ()>(())
        })
        .unwrap();
        let mut expected = bincode::serialize(&groups).unwrap();
        expected.extend(bincode::serialize(&list).unwrap());
        let name: Vec<u8> = bincode::serialize(&"name".to_string()).unwrap();
        expected.extend(bincode::serialize(&name).unwrap());
        assert_eq!(out, expected);

        let source = Bytes::from(out.clone());
        let mut r = Reader::new(&source);
        let read = read_groups(&mut r, &source).unwrap();
        assert_eq!(
            read.iter()
                .map(|(g, b)| (*g, b.to_vec()))
                .collect::<Vec<_>>(),
            groups
        );
        // The groups' bytes are slices of the source buffer, not copies.
        let within = source.as_ptr_range();
        assert!(read
            .iter()
            .all(|(_, b)| within.contains(&b.as_ptr()) || b.is_empty()));
        assert_eq!(read_list(&mut r).unwrap(), list);
        let mut inner = Reader::new(r.bytes("framed").unwrap());
        assert_eq!(inner.bytes("name").unwrap(), b"name");
        assert!(r.is_done() && inner.is_done());
    }

    #[test]
    fn truncated_and_huge_lengths_are_errors_not_panics() {
        let mut out = Vec::new();
        write_groups(&mut out, &[(1, vec![1, 2, 3])]);
        for cut in 0..out.len() {
            let source = Bytes::copy_from_slice(&out[..cut]);
            assert!(
                read_groups(&mut Reader::new(&source), &source).is_err(),
                "cut at {cut}"
            );
        }
        let huge = u64::MAX.to_le_bytes();
        assert!(read_list(&mut Reader::new(&huge)).is_err());
        assert!(Reader::new(&huge).bytes("x").is_err());
    }
}
