//! Response content codings: `Accept-Encoding` negotiation and the zstd/gzip writers that bundles and
//! deny lists are compressed through.

use std::io::Write;

/// A response content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// The `Content-Encoding` value, `None` for identity.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("gzip"),
            Encoding::Zstd => Some("zstd"),
        }
    }

    /// Picks a coding from `Accept-Encoding` (RFC 9110 §12.5.3): the highest q-value; among equals the
    /// server's preference zstd, then gzip, then identity. `*` stands for any coding not listed; a coding
    /// with `q=0` is refused. Without the header, or when nothing listed is acceptable, identity.
    pub fn negotiate(accept: Option<&str>) -> Encoding {
        let Some(accept) = accept else {
            return Encoding::Identity;
        };
        let q = |name: &str| -> Option<f32> {
            let mut star = None;
            for part in accept.split(',') {
                let mut it = part.split(';');
                let coding = it.next().unwrap_or("").trim();
                let weight = it
                    .find_map(|p| {
                        let (k, v) = p.split_once('=')?;
                        (k.trim().eq_ignore_ascii_case("q"))
                            .then(|| v.trim().parse::<f32>().ok())?
                    })
                    .unwrap_or(1.0);
                if coding.eq_ignore_ascii_case(name) {
                    return Some(weight);
                }
                if coding == "*" {
                    star = Some(weight);
                }
            }
            star
        };
        let candidates = [
            (Encoding::Zstd, q("zstd").unwrap_or(0.0)),
            (Encoding::Gzip, q("gzip").unwrap_or(0.0)),
            (Encoding::Identity, q("identity").unwrap_or(0.001)),
        ];
        candidates
            .into_iter()
            .filter(|(_, w)| *w > 0.0)
            .fold(None, |best: Option<(Encoding, f32)>, c| match best {
                Some(b) if b.1 >= c.1 => Some(b),
                _ => Some(c),
            })
            .map_or(Encoding::Identity, |(e, _)| e)
    }
}

/// Compresses into `W` with the negotiated coding. Levels are chosen for speed: a snapshot is mostly
/// MACs and card references, which do not compress at any level.
pub enum Compressor<W: Write> {
    Identity(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    pub fn new(encoding: Encoding, inner: W) -> std::io::Result<Self> {
        Ok(match encoding {
            Encoding::Identity => Compressor::Identity(inner),
            Encoding::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                inner,
                flate2::Compression::fast(),
            )),
            Encoding::Zstd => Compressor::Zstd(zstd::stream::write::Encoder::new(inner, 1)?),
        })
    }

    /// Ends the compressed stream and returns the inner writer.
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Compressor::Identity(w) => Ok(w),
            Compressor::Gzip(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Compressor::Identity(w) => w.write(buf),
            Compressor::Gzip(e) => e.write(buf),
            Compressor::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        // Flushing a compressor mid-stream would cost ratio; chunks leave when the sink's buffer fills.
        Ok(())
    }
}

/// Compresses a small, complete body (the deny list) in memory.
pub fn compress(encoding: Encoding, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = Compressor::new(encoding, Vec::with_capacity(body.len() / 2 + 64))?;
    c.write_all(body)?;
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_negotiated() {
        use Encoding::*;
        let n = |h: &str| Encoding::negotiate(Some(h));
        assert_eq!(Encoding::negotiate(None), Identity);
        assert_eq!(n("gzip, zstd"), Zstd, "server preference among equals");
        assert_eq!(n("zstd;q=0.5, gzip"), Gzip);
        assert_eq!(n("gzip;q=0"), Identity);
        assert_eq!(n("br"), Identity);
        assert_eq!(n("*"), Zstd);
        assert_eq!(n("*;q=0.1, zstd;q=0"), Gzip);
        assert_eq!(n("identity, gzip;q=0.5"), Identity);
        assert_eq!(n("GZIP"), Gzip);
        assert_eq!(
            n("gzip;q=nonsense"),
            Gzip,
            "an unreadable weight counts as 1"
        );
    }
}
