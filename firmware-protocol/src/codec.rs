//! Field-level reading and writing shared by every message (PROTOCOL.md §5.1): little-endian
//! integers, length-prefixed strings, counted lists. Every length and range check lives here once and
//! is applied identically by `parse` and by `emit`, so the emitter cannot produce what the parser
//! rejects.

use crate::message::TextEncoding;

/// What was wrong with a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The payload ended inside this field.
    #[error("payload ends inside the field")]
    Truncated,
    /// Bytes remain after the last field.
    #[error("{0} unexpected bytes after the last field")]
    TrailingBytes(usize),
    /// A numeric field or count outside its range.
    #[error("value {0} out of range")]
    OutOfRange(u64),
    /// A string or list shorter than allowed.
    #[error("length {len} below the minimum {min}")]
    TooShort {
        /// Length found.
        len: usize,
        /// Minimum allowed.
        min: usize,
    },
    /// A string or list longer than allowed.
    #[error("length {len} above the maximum {max}")]
    TooLong {
        /// Length found.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// An ASCII field holding a byte outside printable ASCII (0x20..=0x7E).
    #[error("byte {0:#04x} is not printable ASCII")]
    NotPrintableAscii(u8),
    /// A text field that is not valid in the negotiated text encoding.
    #[error("not valid {} text", .0.name())]
    InvalidText(TextEncoding),
    /// A digits-only field holding something else.
    #[error("byte {0:#04x} is not an ASCII digit")]
    NotDigit(u8),
    /// The message type is not known to this implementation, or has no payload layout.
    #[error("unknown message type")]
    UnknownType,
}

/// A payload that failed to parse, naming the field (`"CARD_MENU.entry.title"`) and the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {kind}")]
pub struct ParseError {
    /// Dotted name of the field, as in PROTOCOL.md.
    pub field: &'static str,
    /// What was wrong.
    pub kind: ParseErrorKind,
}

/// Why a message could not be emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The output buffer is too small.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// A field violates its documented range; the parser would refuse it.
    #[error("invalid field {0}")]
    Invalid(ParseError),
}

/// Length limits of a string or list field, shared by parser and emitter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limit {
    pub(crate) field: &'static str,
    pub(crate) min: usize,
    pub(crate) max: usize,
}

impl Limit {
    pub(crate) const fn new(field: &'static str, min: usize, max: usize) -> Self {
        Limit { field, min, max }
    }

    pub(crate) fn check(&self, len: usize) -> Result<(), ParseError> {
        let kind = if len < self.min {
            ParseErrorKind::TooShort { len, min: self.min }
        } else if len > self.max {
            ParseErrorKind::TooLong { len, max: self.max }
        } else {
            return Ok(());
        };
        Err(ParseError {
            field: self.field,
            kind,
        })
    }
}

pub(crate) fn err(field: &'static str, kind: ParseErrorKind) -> ParseError {
    ParseError { field, kind }
}

/// Printable ASCII only (serial numbers, codes, card tokens): identical bytes in UTF-8 and GB18030.
pub(crate) fn validate_ascii(field: &'static str, bytes: &[u8]) -> Result<(), ParseError> {
    match bytes.iter().find(|b| !(0x20..=0x7E).contains(*b)) {
        Some(&bad) => Err(err(field, ParseErrorKind::NotPrintableAscii(bad))),
        None => Ok(()),
    }
}

/// Structural GB18030 check (GB 18030-2005 byte ranges): one byte 0x00..=0x7F; two bytes
/// 0x81..=0xFE then 0x40..=0x7E or 0x80..=0xFE; four bytes 0x81..=0xFE, 0x30..=0x39, 0x81..=0xFE,
/// 0x30..=0x39. It does not check that a four-byte sequence maps to an assigned code point: the
/// daemon's transcoder (encoding_rs) does, and a reader only needs to know where characters end.
pub(crate) fn is_valid_gb18030(bytes: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b0) = bytes.get(i) {
        if b0 < 0x80 {
            i += 1;
            continue;
        }
        if !(0x81..=0xFE).contains(&b0) {
            return false;
        }
        match bytes.get(i + 1) {
            Some(&b1) if (0x40..=0x7E).contains(&b1) || (0x80..=0xFE).contains(&b1) => i += 2,
            Some(&b1) if (0x30..=0x39).contains(&b1) => {
                let b2_ok = bytes.get(i + 2).is_some_and(|b| (0x81..=0xFE).contains(b));
                let b3_ok = bytes.get(i + 3).is_some_and(|b| (0x30..=0x39).contains(b));
                if !(b2_ok && b3_ok) {
                    return false;
                }
                i += 4;
            }
            _ => return false,
        }
    }
    true
}

pub(crate) fn validate_text(
    field: &'static str,
    bytes: &[u8],
    encoding: TextEncoding,
) -> Result<(), ParseError> {
    let valid = match encoding {
        TextEncoding::Utf8 => core::str::from_utf8(bytes).is_ok(),
        TextEncoding::Gb18030 => is_valid_gb18030(bytes),
    };
    if valid {
        Ok(())
    } else {
        Err(err(field, ParseErrorKind::InvalidText(encoding)))
    }
}

/// Cursor over a payload being parsed (crate-internal; public only because [`crate::ListItem`]
/// names it).
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub(crate) fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], ParseError> {
        if self.rest.len() < n {
            return Err(err(field, ParseErrorKind::Truncated));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const K: usize>(&mut self, field: &'static str) -> Result<[u8; K], ParseError> {
        let mut out = [0u8; K];
        out.copy_from_slice(self.take(field, K)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ParseError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ParseError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ParseError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ParseError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// u8 length then that many bytes, length checked against `limit`.
    pub(crate) fn bytes8(&mut self, limit: &Limit) -> Result<&'a [u8], ParseError> {
        let len = usize::from(self.u8(limit.field)?);
        limit.check(len)?;
        self.take(limit.field, len)
    }

    pub(crate) fn ascii8(&mut self, limit: &Limit) -> Result<&'a str, ParseError> {
        let bytes = self.bytes8(limit)?;
        validate_ascii(limit.field, bytes)?;
        core::str::from_utf8(bytes)
            .map_err(|_| err(limit.field, ParseErrorKind::InvalidText(TextEncoding::Utf8)))
    }

    pub(crate) fn text8(
        &mut self,
        limit: &Limit,
        encoding: TextEncoding,
    ) -> Result<&'a [u8], ParseError> {
        let bytes = self.bytes8(limit)?;
        validate_text(limit.field, bytes, encoding)?;
        Ok(bytes)
    }

    /// u8 element count checked against `limit`.
    pub(crate) fn count8(&mut self, limit: &Limit) -> Result<u8, ParseError> {
        let count = self.u8(limit.field)?;
        limit.check(usize::from(count))?;
        Ok(count)
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    pub(crate) fn finish(self, message: &'static str) -> Result<(), ParseError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(err(message, ParseErrorKind::TrailingBytes(self.rest.len())))
        }
    }
}

/// Cursor over an output buffer (crate-internal; public only because [`crate::ListItem`] names
/// it).
#[doc(hidden)]
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.pos
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<(), EmitError> {
        let end = self.pos + bytes.len();
        let dest = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(EmitError::BufferTooSmall)?;
        dest.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    pub(crate) fn u8(&mut self, v: u8) -> Result<(), EmitError> {
        self.put(&[v])
    }
    pub(crate) fn u16(&mut self, v: u16) -> Result<(), EmitError> {
        self.put(&v.to_le_bytes())
    }
    pub(crate) fn u32(&mut self, v: u32) -> Result<(), EmitError> {
        self.put(&v.to_le_bytes())
    }
    pub(crate) fn u64(&mut self, v: u64) -> Result<(), EmitError> {
        self.put(&v.to_le_bytes())
    }

    pub(crate) fn bytes8(&mut self, limit: &Limit, bytes: &[u8]) -> Result<(), EmitError> {
        limit.check(bytes.len()).map_err(EmitError::Invalid)?;
        // The limit's maximum is at most 255 for every u8-prefixed field.
        self.u8(u8::try_from(bytes.len()).map_err(|_| {
            EmitError::Invalid(err(
                limit.field,
                ParseErrorKind::TooLong {
                    len: bytes.len(),
                    max: 255,
                },
            ))
        })?)?;
        self.put(bytes)
    }

    pub(crate) fn ascii8(&mut self, limit: &Limit, text: &str) -> Result<(), EmitError> {
        validate_ascii(limit.field, text.as_bytes()).map_err(EmitError::Invalid)?;
        self.bytes8(limit, text.as_bytes())
    }

    pub(crate) fn count8(&mut self, limit: &Limit, count: usize) -> Result<(), EmitError> {
        limit.check(count).map_err(EmitError::Invalid)?;
        self.u8(u8::try_from(count).map_err(|_| {
            EmitError::Invalid(err(
                limit.field,
                ParseErrorKind::TooLong {
                    len: count,
                    max: 255,
                },
            ))
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gb18030_structure() {
        // "请稍候" in GB18030 (GBK two-byte range).
        assert!(is_valid_gb18030(&[0xC7, 0xEB, 0xC9, 0xD4, 0xBA, 0xF2]));
        assert!(is_valid_gb18030(b"plain ascii"));
        // Four-byte sequence (U+00 80 region) and a truncated one.
        assert!(is_valid_gb18030(&[0x81, 0x30, 0x81, 0x30]));
        assert!(!is_valid_gb18030(&[0x81, 0x30, 0x81]));
        assert!(!is_valid_gb18030(&[0xC7]));
        assert!(!is_valid_gb18030(&[0x80]));
        assert!(!is_valid_gb18030(&[0xFF, 0x40]));
    }
}
