//! Framing on the exchange connections: every frame is a little-endian `u32` length and that many
//! bytes. Data frames carry bincode-encoded `Message`s (compact, fast); greetings and control frames
//! carry JSON (rare, and readable in a packet capture).

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest frame accepted (a batch of records); anything bigger is a protocol error.
pub const MAX_FRAME: usize = 512 << 20;

/// Write one frame.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(payload)
}

/// Read one frame into `buf`. `Ok(false)` on a clean end of stream before a frame starts.
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {MAX_FRAME}"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf)?;
    Ok(true)
}

/// Write a JSON frame.
pub fn write_json<T: Serialize>(w: &mut impl Write, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_frame(w, &bytes)?;
    w.flush()
}

/// Read a JSON frame; `Ok(None)` on a clean end of stream.
pub fn read_json<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut buf = Vec::new();
    if !read_frame(r, &mut buf)? {
        return Ok(None);
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_clean_end_is_not_an_error() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, b"hello").unwrap();
        write_frame(&mut bytes, b"").unwrap();
        write_json(&mut bytes, &vec![1u32, 2, 3]).unwrap();
        let mut r = bytes.as_slice();
        let mut buf = Vec::new();
        assert!(read_frame(&mut r, &mut buf).unwrap());
        assert_eq!(buf, b"hello");
        assert!(read_frame(&mut r, &mut buf).unwrap());
        assert!(buf.is_empty());
        assert_eq!(read_json::<Vec<u32>>(&mut r).unwrap(), Some(vec![1, 2, 3]));
        assert!(!read_frame(&mut r, &mut buf).unwrap());
    }

    #[test]
    fn a_truncated_frame_and_an_oversized_length_are_errors() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, b"hello").unwrap();
        bytes.truncate(7);
        let mut buf = Vec::new();
        assert!(read_frame(&mut bytes.as_slice(), &mut buf).is_err());
        let huge = (u32::MAX).to_le_bytes();
        let err = read_frame(&mut huge.as_slice(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
