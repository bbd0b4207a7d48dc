//! The token format: `<prefix>_<secret><checksum>`.
//!
//! - `prefix`: one per [`TokenKind`], configurable (defaults `tgr`, `tga`,
//!   `tgs`, `tgk`).
//! - `secret`: 32 bytes from the OS CSPRNG, written as a fixed-width,
//!   43-character base62 number (62^43 > 2^256, so no entropy is lost).
//! - `checksum`: CRC32 of `<prefix>_<secret>`, as 6 base62 characters.
//!
//! The checksum is what lets the request path throw away typos and garbage
//! with no cache or store access at all ([`TokenFormat::check`]), and lets
//! secret scanners recognise a leaked token. Only [`TokenHash`] (SHA-256 of
//! the whole token) is ever stored or cached; the secret itself lives in a
//! [`Secret`], whose `Debug` shows only the public display prefix.

use std::fmt;

use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Base62 characters of the 32-byte secret.
pub const SECRET_LEN: usize = 43;
/// Base62 characters of the CRC32 checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Longest prefix accepted in the configuration.
pub const MAX_PREFIX_LEN: usize = 16;
/// Longest legacy (imported) token accepted before it is hashed. Anything
/// longer is refused as malformed without a lookup.
pub const MAX_LEGACY_LEN: usize = 512;
/// Characters of the secret shown in masked listings after the prefix.
const DISPLAY_CHARS: usize = 4;

/// What a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Operator: everything, every tenant.
    Root,
    /// A tenant's administrator: its own tenant only.
    TenantAdmin,
    /// An account's login session, minted by the customer's login system.
    Session,
    /// A long-lived API token of an account.
    Api,
}

impl TokenKind {
    /// Every kind, in a fixed order.
    pub const ALL: [TokenKind; 4] = [
        TokenKind::Root,
        TokenKind::TenantAdmin,
        TokenKind::Session,
        TokenKind::Api,
    ];

    /// The name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Root => "root",
            TokenKind::TenantAdmin => "tenant_admin",
            TokenKind::Session => "session",
            TokenKind::Api => "api",
        }
    }

    /// Parses a stored kind name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SHA-256 of a whole token: the only form in which a token is stored,
/// cached or compared.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a presented token.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Lower-case hex, for importing legacy hashes and for logs.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
        }
        s
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not a secret, but a short form keeps logs readable.
        write!(f, "TokenHash({}…)", &self.to_hex()[..12])
    }
}

/// A freshly minted token. Its `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    full: String,
    display_len: usize,
}

impl Secret {
    /// The whole token. Call only to hand it to its owner, once.
    pub fn expose(&self) -> &str {
        &self.full
    }

    /// The public display prefix, e.g. `tgk_4Fz2`, shown in masked listings.
    pub fn display_prefix(&self) -> &str {
        &self.full[..self.display_len]
    }

    /// SHA-256 of the token.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.full)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}…)", self.display_prefix())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.display_prefix())
    }
}

/// Why a presented token failed the cheap checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Wrong length or characters outside the token alphabet.
    #[error("token is not well formed")]
    Shape,
    /// Well formed, but with a prefix this gateway does not issue.
    #[error("token prefix is unknown")]
    Prefix,
    /// The checksum does not match: a typo or a made-up token.
    #[error("token checksum does not match")]
    Checksum,
}

/// The result of the cheap checks: a token worth looking up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// A token in our format; the kind its prefix claims (the store decides).
    Native(TokenKind),
    /// A token in no format of ours, accepted because legacy import is on.
    Legacy,
}

/// The configured prefixes, and whether legacy (imported) tokens are accepted.
#[derive(Clone, Debug)]
pub struct TokenFormat {
    prefixes: [(TokenKind, String); 4],
    accept_legacy: bool,
}

impl Default for TokenFormat {
    fn default() -> Self {
        Self::new(["tgr", "tga", "tgs", "tgk"].map(String::from), false)
    }
}

impl TokenFormat {
    /// Prefixes in [`TokenKind::ALL`] order. The config layer validates them
    /// (distinct, 1 to 16 ASCII alphanumerics).
    pub fn new(prefixes: [String; 4], accept_legacy: bool) -> Self {
        let [r, t, s, a] = prefixes;
        Self {
            prefixes: [
                (TokenKind::Root, r),
                (TokenKind::TenantAdmin, t),
                (TokenKind::Session, s),
                (TokenKind::Api, a),
            ],
            accept_legacy,
        }
    }

    /// Whether tokens outside our format are looked up at all.
    pub fn accepts_legacy(&self) -> bool {
        self.accept_legacy
    }

    /// The prefix for a kind.
    pub fn prefix(&self, kind: TokenKind) -> &str {
        self.prefixes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| p.as_str())
            .unwrap_or("tg")
    }

    /// Mints a new token of `kind` from the OS CSPRNG.
    pub fn generate(&self, kind: TokenKind) -> Secret {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        self.from_entropy(kind, &bytes)
    }

    /// Builds a token from given entropy (for tests and fuzzing seeds).
    pub fn from_entropy(&self, kind: TokenKind, entropy: &[u8; 32]) -> Secret {
        let prefix = self.prefix(kind);
        let mut full = String::with_capacity(prefix.len() + 1 + SECRET_LEN + CHECKSUM_LEN);
        full.push_str(prefix);
        full.push('_');
        base62_fixed(entropy, SECRET_LEN, &mut full);
        let crc = crc32fast::hash(full.as_bytes());
        base62_fixed(&crc.to_be_bytes(), CHECKSUM_LEN, &mut full);
        Secret {
            display_len: prefix.len() + 1 + DISPLAY_CHARS,
            full,
        }
    }

    /// The cheap checks of the request path: length, alphabet, prefix and
    /// checksum. No allocation, no I/O.
    pub fn check(&self, token: &str) -> Result<Checked, FormatError> {
        match self.check_native(token) {
            Ok(kind) => Ok(Checked::Native(kind)),
            Err(e) if !self.accept_legacy => Err(e),
            Err(_) => {
                // Legacy tokens come in any format, so only refuse what no
                // sane token looks like: empty, huge, or non-visible ASCII.
                if token.is_empty()
                    || token.len() > MAX_LEGACY_LEN
                    || !token.bytes().all(|b| b.is_ascii_graphic())
                {
                    Err(FormatError::Shape)
                } else {
                    Ok(Checked::Legacy)
                }
            }
        }
    }

    fn check_native(&self, token: &str) -> Result<TokenKind, FormatError> {
        let Some((prefix, rest)) = token.split_once('_') else {
            return Err(FormatError::Shape);
        };
        if rest.len() != SECRET_LEN + CHECKSUM_LEN
            || prefix.is_empty()
            || prefix.len() > MAX_PREFIX_LEN
            || !all_alphanumeric(prefix.as_bytes())
            || !all_alphanumeric(rest.as_bytes())
        {
            return Err(FormatError::Shape);
        }
        let kind = self
            .prefixes
            .iter()
            .find(|(_, p)| p == prefix)
            .map(|(k, _)| *k)
            .ok_or(FormatError::Prefix)?;
        let body_len = prefix.len() + 1 + SECRET_LEN;
        let expected = crc32fast::hash(&token.as_bytes()[..body_len]);
        match base62_decode(&token.as_bytes()[body_len..]) {
            Some(n) if n == u64::from(expected) => Ok(kind),
            _ => Err(FormatError::Checksum),
        }
    }
}

/// Whether every byte is an ASCII letter or digit: every byte looked at,
/// with no branch per byte, which the compiler does 16 bytes at a time (a
/// token's alphabet is checked on every new connection).
fn all_alphanumeric(v: &[u8]) -> bool {
    v.iter().fold(true, |ok, &b| {
        let lower = b | 0x20;
        ok & ((b.wrapping_sub(b'0') < 10) | (lower.wrapping_sub(b'a') < 26))
    })
}

/// Writes `bytes` (big-endian) as exactly `width` base62 digits.
fn base62_fixed(bytes: &[u8], width: usize, out: &mut String) {
    let mut num = bytes.to_vec();
    let mut digits = vec![b'0'; width];
    for slot in digits.iter_mut().rev() {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = ALPHABET[rem as usize];
    }
    out.extend(digits.into_iter().map(char::from));
}

/// Decodes a short base62 number; `None` on a bad digit or overflow.
fn base62_decode(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'Z' => c - b'A' + 10,
            b'a'..=b'z' => c - b'a' + 36,
            _ => return None,
        };
        acc.checked_mul(62)?.checked_add(u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_tokens_pass_the_check_and_carry_their_kind() {
        let f = TokenFormat::default();
        for kind in TokenKind::ALL {
            let t = f.generate(kind);
            assert_eq!(f.check(t.expose()), Ok(Checked::Native(kind)));
            assert_eq!(t.expose().len(), 3 + 1 + SECRET_LEN + CHECKSUM_LEN);
            assert!(t.expose().starts_with(f.prefix(kind)));
        }
    }

    #[test]
    fn debug_and_display_hide_the_secret() {
        let t = TokenFormat::default().generate(TokenKind::Api);
        let shown = format!("{t:?} {t}");
        assert!(!shown.contains(t.expose()));
        assert!(shown.contains(t.display_prefix()));
        assert_eq!(t.display_prefix().len(), "tgk_".len() + DISPLAY_CHARS);
    }

    #[test]
    fn zero_and_max_entropy_encode_at_full_width() {
        let f = TokenFormat::default();
        let zero = f.from_entropy(TokenKind::Api, &[0; 32]);
        let max = f.from_entropy(TokenKind::Api, &[0xff; 32]);
        assert_eq!(zero.expose().len(), max.expose().len());
        assert!(f.check(zero.expose()).is_ok());
        assert!(f.check(max.expose()).is_ok());
    }

    #[test]
    fn garbage_is_refused_by_shape_prefix_or_checksum() {
        let f = TokenFormat::default();
        assert_eq!(f.check(""), Err(FormatError::Shape));
        assert_eq!(f.check("hello"), Err(FormatError::Shape));
        assert_eq!(f.check("tgk_short"), Err(FormatError::Shape));
        let good = f.generate(TokenKind::Api);
        let other = good.expose().replacen("tgk", "zzz", 1);
        assert_eq!(f.check(&other), Err(FormatError::Prefix));
        let mut typo = good.expose().to_string().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            f.check(std::str::from_utf8(&typo).unwrap()),
            Err(FormatError::Checksum)
        );
    }

    #[test]
    fn legacy_tokens_need_the_switch() {
        let strict = TokenFormat::default();
        let lax = TokenFormat::new(["tgr", "tga", "tgs", "tgk"].map(String::from), true);
        assert!(strict.check("2|abc123xyz789").is_err());
        assert_eq!(lax.check("2|abc123xyz789"), Ok(Checked::Legacy));
        assert_eq!(lax.check("has space"), Err(FormatError::Shape));
        assert_eq!(lax.check(&"x".repeat(600)), Err(FormatError::Shape));
    }

    #[test]
    fn hash_hex_round_trips() {
        let h = TokenHash::of("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(TokenHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(TokenHash::from_hex("zz"), None);
    }

    #[test]
    fn the_alphabet_check_is_ascii_alphanumeric_for_every_byte() {
        for b in 0..=u8::MAX {
            assert_eq!(all_alphanumeric(&[b]), b.is_ascii_alphanumeric(), "{b:#x}");
            assert_eq!(
                all_alphanumeric(&[b'a', b, b'9']),
                b.is_ascii_alphanumeric()
            );
        }
        assert!(all_alphanumeric(b""));
    }

    proptest! {
        #[test]
        fn any_single_character_change_is_caught(entropy in any::<[u8; 32]>(), pos in 4usize..53, c in 0usize..62) {
            let f = TokenFormat::default();
            let t = f.from_entropy(TokenKind::Api, &entropy);
            let mut bytes = t.expose().as_bytes().to_vec();
            prop_assume!(bytes[pos] != ALPHABET[c]);
            bytes[pos] = ALPHABET[c];
            let changed = String::from_utf8(bytes).unwrap();
            // CRC32 detects every single-symbol error.
            prop_assert!(f.check(&changed).is_err());
        }

        #[test]
        fn check_never_panics(s in "\\PC{0,80}") {
            let _ = TokenFormat::default().check(&s);
        }
    }
}
