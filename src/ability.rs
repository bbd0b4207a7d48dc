//! Abilities: the permission strings tokens hold and routes need, and which
//! grants which (`*` grants all, `calls:*` grants `calls:read`). A bottom
//! layer: config validates them, the issuer and the decision compare them.

use std::fmt;

/// Longest ability string accepted.
pub const MAX_ABILITY_LEN: usize = 128;

/// A permission string: `calls:read`, a namespace wildcard `calls:*`, or `*`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Ability(String);

/// Why an ability string is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AbilityError {
    /// Empty or longer than [`MAX_ABILITY_LEN`].
    #[error("ability must be 1 to 128 characters")]
    Length,
    /// A character outside `A-Z a-z 0-9 _ - . : *`.
    #[error("ability may hold only letters, digits and _ - . : *")]
    Charset,
    /// `*` anywhere but alone or as the whole last segment (`ns:*`).
    #[error("* may only stand alone or as the last segment (\"ns:*\")")]
    Wildcard,
}

impl Ability {
    /// Validates an ability string.
    pub fn parse(s: &str) -> Result<Self, AbilityError> {
        if s.is_empty() || s.len() > MAX_ABILITY_LEN {
            return Err(AbilityError::Length);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'*'))
        {
            return Err(AbilityError::Charset);
        }
        if let Some(star) = s.find('*') {
            let ok = star == s.len() - 1 && (s.len() == 1 || s[..star].ends_with(':'));
            if !ok {
                return Err(AbilityError::Wildcard);
            }
        }
        if s.starts_with(':') || s.contains("::") {
            return Err(AbilityError::Charset);
        }
        Ok(Self(s.to_string()))
    }

    /// The ability as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether holding `self` grants `needed`: `*` grants everything,
    /// `calls:*` grants `calls:read` and `calls:read:own` (and `calls:*`),
    /// anything else grants only itself.
    pub fn grants(&self, needed: &str) -> bool {
        grants(&self.0, needed)
    }
}

/// [`Ability::grants`] on plain strings (abilities in the store are validated
/// on the way in).
pub fn grants(held: &str, needed: &str) -> bool {
    if held == "*" || held == needed {
        return true;
    }
    match held.strip_suffix('*') {
        Some(ns) if ns.ends_with(':') => needed.starts_with(ns) && needed.len() > ns.len(),
        _ => false,
    }
}

/// Whether a set of held abilities grants every needed one.
pub fn grants_all<'a>(held: &[impl AsRef<str>], needed: impl IntoIterator<Item = &'a str>) -> bool {
    needed
        .into_iter()
        .all(|n| held.iter().any(|h| grants(h.as_ref(), n)))
}

impl fmt::Debug for Ability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Ability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
