//! Keys that must never reach a log line, an error message or `Debug` output.

use std::fmt;

/// A secret string. `Debug` and `Display` print a fixed mask, so a secret can sit
/// in any config struct that derives `Debug` without leaking.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The only way to the plaintext; grep for it when auditing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Supabase's legacy keys are JWTs and also go in `Authorization`; the new
    /// `sb_secret_...` keys must only go in `apikey`.
    pub fn is_jwt(&self) -> bool {
        let parts: Vec<&str> = self.0.split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty()) && self.0.starts_with("eyJ")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("sk-very-secret");
        assert!(!format!("{s:?} {s}").contains("very-secret"));
        assert_eq!(s.expose(), "sk-very-secret");
    }

    #[test]
    fn recognises_jwts() {
        assert!(Secret::new("eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.abc").is_jwt());
        assert!(!Secret::new("sb_secret_abc123").is_jwt());
    }
}
