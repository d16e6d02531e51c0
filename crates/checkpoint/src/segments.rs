//! A body in pieces: a state file laid out as its small framing headers and the state's own
//! buffers, stored without first joining them into one buffer (which cost a copy of the whole
//! file and, for a full checkpoint, as much memory again as the state).

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// The bytes of one object, in order, as several buffers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments {
    parts: Vec<Bytes>,
    len: usize,
}

impl Segments {
    /// The object made of `parts`, in order (empty parts are dropped).
    pub fn new(parts: Vec<Bytes>) -> Self {
        let parts: Vec<Bytes> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        let len = parts.iter().map(Bytes::len).sum();
        Self { parts, len }
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffers, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// CRC-32C of the whole object.
    pub fn crc32c(&self) -> u32 {
        self.parts
            .iter()
            .fold(0, |crc, part| crc32c::crc32c_append(crc, part))
    }

    /// Bytes `range` of the object: a slice of one buffer when it lies within one, else a copy of
    /// just that range.
    ///
    /// # Panics
    /// If `range` is not within `0..len()`, or decreasing.
    pub fn range(&self, range: Range<usize>) -> Bytes {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range {range:?} out of 0..{}",
            self.len
        );
        let mut out: Option<BytesMut> = None;
        let mut at = 0;
        for part in &self.parts {
            let part_range = at..at + part.len();
            at = part_range.end;
            let start = range.start.max(part_range.start);
            let end = range.end.min(part_range.end);
            if start >= end {
                if part_range.start >= range.end {
                    break;
                }
                continue;
            }
            let piece = part.slice(start - part_range.start..end - part_range.start);
            if out.is_none() && piece.len() == range.len() {
                return piece; // within one buffer
            }
            out.get_or_insert_with(|| BytesMut::with_capacity(range.len()))
                .extend_from_slice(&piece);
        }
        out.map_or_else(Bytes::new, BytesMut::freeze)
    }

    /// The whole object in one buffer (no copy when it is one buffer already).
    pub fn into_bytes(mut self) -> Bytes {
        match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.swap_remove(0),
            _ => self.range(0..self.len),
        }
    }
}

impl From<Bytes> for Segments {
    fn from(bytes: Bytes) -> Self {
        Self::new(vec![bytes])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Segments, Vec<u8>) {
        let parts: Vec<Bytes> = [&b"ab"[..], b"", b"cdefg", b"h", b"ijklmnop"]
            .iter()
            .map(|p| Bytes::copy_from_slice(p))
            .collect();
        let whole: Vec<u8> = parts.iter().flat_map(|p| p.to_vec()).collect();
        (Segments::new(parts), whole)
    }

    #[test]
    fn every_range_equals_the_joined_bytes() {
        let (segments, whole) = sample();
        assert_eq!(segments.len(), whole.len());
        for start in 0..=whole.len() {
            for end in start..=whole.len() {
                assert_eq!(
                    segments.range(start..end),
                    whole[start..end],
                    "{start}..{end}"
                );
            }
        }
        assert_eq!(segments.clone().into_bytes(), whole);
        assert_eq!(segments.crc32c(), crc32c::crc32c(&whole));
    }

    #[test]
    fn a_range_within_one_buffer_is_not_copied() {
        let (segments, _) = sample();
        let inside = segments.range(3..6); // "def" of "cdefg"
        assert_eq!(inside, &b"def"[..]);
        let buffer = segments.parts()[1].as_ptr_range();
        assert!(buffer.contains(&inside.as_ptr()));
    }

    #[test]
    fn empty_bodies() {
        let empty = Segments::new(vec![Bytes::new()]);
        assert!(empty.is_empty() && empty.parts().is_empty());
        assert_eq!(empty.crc32c(), crc32c::crc32c(b""));
        assert_eq!(empty.range(0..0), Bytes::new());
        assert_eq!(empty.into_bytes(), Bytes::new());
    }
}
