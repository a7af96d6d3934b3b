//! Pairing codes, the format both sides read (`docs/api/README.md`, "Pairing"): 8 characters of
//! Crockford's base32 (`0-9 A-Z` without `I L O U`) from 40 random bits, shown `XXXX-XXXX`; typed in
//! any case, with or without the dash or spaces, `I`/`L` read as `1` and `O` as `0`. The platform makes
//! and checks them (`clearing-server`'s `core::pairing`); `redeemd enroll` checks what was typed before
//! it asks the platform.

/// Crockford's base32 alphabet.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Random bytes a code is made of.
pub const CODE_RANDOM_BYTES: usize = 5;

/// What is wrong with a typed code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a pairing code is 8 letters and digits, XXXX-XXXX")]
pub struct BadCode;

/// A code from 5 random bytes, as shown: `XXXX-XXXX`.
pub fn new_code(random: &[u8; CODE_RANDOM_BYTES]) -> String {
    let bits = random
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let text: String = (0..8)
        .rev()
        .map(|i| char::from(ALPHABET[((bits >> (i * 5)) & 31) as usize]))
        .collect();
    format!("{}-{}", &text[..4], &text[4..])
}

/// A typed code in its one canonical form: 8 alphabet characters, no dash.
pub fn normalize(typed: &str) -> Result<String, BadCode> {
    let mut out = String::with_capacity(8);
    for c in typed.chars().filter(|c| *c != '-' && *c != ' ') {
        let c = match c.to_ascii_uppercase() {
            'I' | 'L' => '1',
            'O' => '0',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) || out.len() == 8 {
            return Err(BadCode);
        }
        out.push(c);
    }
    if out.len() == 8 {
        Ok(out)
    } else {
        Err(BadCode)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_are_short_and_typed_loosely() {
        let c = new_code(&[0xff, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(c, "ZW01-4D2P");
        assert_eq!(normalize(&c).unwrap(), "ZW014D2P");
        assert_eq!(normalize("zw0i 4d2p").unwrap(), "ZW014D2P");
        assert_eq!(normalize("1IL0-0000").unwrap(), "11100000");
        for bad in [
            "",
            "ZW00-4D2",
            "ZW00-4D2PP",
            "ZW00-4D2U",
            "ZW00-4D2é",
            "ZW00_4D2P",
        ] {
            assert_eq!(normalize(bad), Err(BadCode), "{bad}");
        }
        for b in 0..=255u8 {
            let c = new_code(&[b, b ^ 0x5a, b.wrapping_mul(7), 0, b]);
            assert_eq!(normalize(&c).unwrap().len(), 8);
        }
    }
}
