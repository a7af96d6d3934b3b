//! Canonical byte encoding shared by every MACed structure.
//!
//! Rules (see `docs/entitlement-format.md`): integers are fixed-width big-endian; a string is a `u32` byte
//! length followed by UTF-8; a list is a `u32` count followed by its elements; an option is a `0`/`1` tag
//! byte followed by the value; an enum is one tag byte. There is exactly one encoding of each value, so
//! decoding then re-encoding gives the same bytes, and the decoder refuses anything else (unknown tags,
//! invalid UTF-8, trailing bytes, lengths beyond the input).

use thiserror::Error;

/// Why bytes could not be decoded. `at` is the byte offset where decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("truncated at byte {at}: needed {needed} more bytes")]
    Truncated { at: usize, needed: usize },
    #[error("invalid UTF-8 in {field} at byte {at}")]
    BadUtf8 { field: &'static str, at: usize },
    #[error("unknown {field} tag {tag} at byte {at}")]
    BadTag {
        field: &'static str,
        tag: u8,
        at: usize,
    },
    #[error("{count} trailing bytes after the value")]
    Trailing { count: usize },
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// Appends canonical encodings to a byte vector.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// Length-prefixed bytes. Lengths above `u32::MAX` cannot occur for anything this crate encodes
    /// (inputs are bounded far below); they are clamped so that encoding stays infallible and the MAC
    /// check on the other side fails instead.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(v);
        self
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    pub fn count(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX))
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
}

/// Reads canonical encodings from a byte slice; every read is bounds-checked.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::Trailing { count }),
        }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                at: self.pos,
                needed: n - self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::BadTag { field, tag, at }),
        }
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    pub fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let at = self.pos;
        let raw = self.bytes()?;
        std::str::from_utf8(raw).map_err(|_| DecodeError::BadUtf8 { field, at })
    }
    pub fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        self.str(field).map(str::to_owned)
    }
    /// A list count, checked against the bytes left assuming each element takes at least `min_size` bytes,
    /// so a hostile count cannot make the caller allocate more than the input justifies.
    pub fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.u32()? as usize;
        if n.saturating_mul(min_size.max(1)) > self.remaining() {
            return Err(DecodeError::Truncated {
                at,
                needed: n.saturating_mul(min_size.max(1)) - self.remaining(),
            });
        }
        Ok(n)
    }
    pub fn option_tag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        self.bool(field)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roundtrip_and_strictness() {
        let mut w = Writer::new();
        w.u8(7)
            .u16(0x0102)
            .u32(3)
            .u64(u64::MAX)
            .i64(-5)
            .str("洗车")
            .bool(true);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u16().unwrap(), 0x0102);
        assert_eq!(r.u32().unwrap(), 3);
        assert_eq!(r.u64().unwrap(), u64::MAX);
        assert_eq!(r.i64().unwrap(), -5);
        assert_eq!(r.str("s").unwrap(), "洗车");
        assert!(r.bool("b").unwrap());
        r.finish().unwrap();
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 1, 2];
        assert!(matches!(
            Reader::new(&bytes).bytes(),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Reader::new(&bytes).count(1),
            Err(DecodeError::Truncated { .. })
        ));
        let bad_utf8 = [0, 0, 0, 1, 0xff];
        assert!(matches!(
            Reader::new(&bad_utf8).str("f"),
            Err(DecodeError::BadUtf8 { .. })
        ));
        assert_eq!(
            Reader::new(&[2]).bool("b"),
            Err(DecodeError::BadTag {
                field: "b",
                tag: 2,
                at: 0
            })
        );
        let mut r = Reader::new(&[1, 2]);
        r.u8().unwrap();
        assert_eq!(r.finish(), Err(DecodeError::Trailing { count: 1 }));
    }
}
