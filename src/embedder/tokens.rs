//! cl100k_base token counting and truncation (the tokenizer of OpenAI's
//! text-embedding-3 and ada-002 models, which the providers here serve).
//!
//! `bpe-openai` over `tiktoken-rs`: it counts with a limit in time proportional
//! to the limit, not the text, which is what truncating long documents needs.

use std::borrow::Cow;

/// OpenAI rejects inputs over 8192 tokens; one token of margin, as OpenAI's own
/// cookbook advises.
pub const MAX_INPUT_TOKENS: usize = 8191;

/// The longest cl100k_base token, in bytes (a run of 128 spaces; a unit test
/// reads it from the vocabulary).
pub const LONGEST_TOKEN_BYTES: usize = 128;

/// The prefix of a text that always holds its first `MAX_INPUT_TOKENS` tokens:
/// a token spans at most `LONGEST_TOKEN_BYTES` bytes and a character is at
/// least one byte, so 8,191 tokens never span more characters than this
/// (1,048,448). The database cuts texts to it before sending them, so a 50 MB
/// text costs the worker 1 MB, and a realistic one (3-5 characters a token)
/// is never cut there at all.
pub const MAX_PREFIX_CHARS: usize = MAX_INPUT_TOKENS * LONGEST_TOKEN_BYTES;

/// A text cut to fit one input, with its token count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared<'a> {
    pub text: Cow<'a, str>,
    pub tokens: usize,
    pub truncated: bool,
}

pub fn count(text: &str) -> usize {
    bpe_openai::cl100k_base().count(text)
}

/// Cuts `text` to at most `limit` tokens at a token boundary, leaving it whole
/// when it fits. Only the pieces up to the limit are encoded.
pub fn truncate(text: &str, limit: usize) -> Prepared<'_> {
    let tok = bpe_openai::cl100k_base();
    let normalized = tok.normalize(text);
    if let Some(tokens) = tok.count_till_limit(&normalized, limit + 1) {
        if tokens <= limit {
            return Prepared {
                text: Cow::Borrowed(text),
                tokens,
                truncated: false,
            };
        }
    }
    let mut used = 0usize;
    let mut end = 0usize;
    let mut tail = String::new();
    for piece in tok.split(text) {
        let n = tok.count(piece);
        if used + n <= limit {
            used += n;
            end += piece.len();
            continue;
        }
        // The piece straddles the limit: keep its longest token prefix that is
        // valid UTF-8 (a cut inside a multi-byte letter is not).
        let tokens = tok.encode(piece);
        let mut keep = limit - used;
        while keep > 0 {
            if let Some(s) = tok.decode(&tokens[..keep]) {
                tail = s;
                break;
            }
            keep -= 1;
        }
        break;
    }
    let mut out = String::with_capacity(end + tail.len());
    out.push_str(&text[..end]);
    out.push_str(&tail);
    // Re-encoding a cut text can merge differently at the seam; trim until it fits.
    let mut tokens = tok.count(out.as_str());
    while tokens > limit {
        out.pop();
        tokens = tok.count(out.as_str());
    }
    Prepared {
        text: Cow::Owned(out),
        tokens,
        truncated: true,
    }
}

/// A provider's tokenizer: how its model counts and cuts texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokenizer {
    Cl100k,
}

impl Tokenizer {
    pub fn count(self, text: &str) -> usize {
        match self {
            Tokenizer::Cl100k => count(text),
        }
    }

    pub fn truncate(self, text: &str, limit: usize) -> Prepared<'_> {
        match self {
            Tokenizer::Cl100k => truncate(text, limit),
        }
    }

    pub fn truncate_owned(self, text: String, limit: usize) -> Prepared<'static> {
        match self {
            Tokenizer::Cl100k => truncate_owned(text, limit),
        }
    }

    /// The prefix of any text that holds its first `limit` tokens, in
    /// characters (see `MAX_PREFIX_CHARS`).
    pub fn prefix_chars(self, limit: usize) -> usize {
        match self {
            Tokenizer::Cl100k => limit * LONGEST_TOKEN_BYTES,
        }
    }
}

/// `truncate` for a text the caller owns: a text that fits is kept without a
/// copy, a longer one is replaced by its cut, so the long original is freed.
pub fn truncate_owned(text: String, limit: usize) -> Prepared<'static> {
    let cut = truncate(&text, limit);
    if cut.truncated {
        return Prepared {
            text: Cow::Owned(cut.text.into_owned()),
            tokens: cut.tokens,
            truncated: true,
        };
    }
    let tokens = cut.tokens;
    Prepared {
        text: Cow::Owned(text),
        tokens,
        truncated: false,
    }
}

/// Empty and whitespace-only texts are skipped: OpenAI rejects an empty input,
/// and a vector of nothing would pollute search results.
pub fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_stay_whole() {
        let p = truncate("Lov om kommuner og fylkeskommuner", MAX_INPUT_TOKENS);
        assert!(!p.truncated);
        assert_eq!(p.text, "Lov om kommuner og fylkeskommuner");
        assert_eq!(p.tokens, count("Lov om kommuner og fylkeskommuner"));
    }

    #[test]
    fn long_texts_are_cut_to_the_limit_and_stay_a_prefix() {
        let text = "Departementet kan gi forskrift om særlige regler for søknad. ".repeat(2000);
        let p = truncate(&text, MAX_INPUT_TOKENS);
        assert!(p.truncated);
        assert!(
            p.tokens <= MAX_INPUT_TOKENS && p.tokens > MAX_INPUT_TOKENS - 10,
            "{}",
            p.tokens
        );
        assert_eq!(count(&p.text), p.tokens);
        assert!(text.starts_with(p.text.as_ref()));
    }

    #[test]
    fn cuts_never_split_a_letter() {
        let text = "æøå".repeat(20_000);
        let p = truncate(&text, 100);
        assert!(p.tokens <= 100);
        assert!(text.starts_with(p.text.as_ref()));
    }

    #[test]
    fn the_longest_token_is_what_the_prefix_bound_assumes() {
        let bpe = &bpe_openai::cl100k_base().bpe;
        let longest = (0..bpe.num_tokens() as u32).map(|t| bpe.token_len(t)).max();
        assert_eq!(longest, Some(LONGEST_TOKEN_BYTES));
    }

    #[test]
    fn the_prefix_holds_the_input_limit_even_for_the_longest_tokens() {
        // The worst case: nothing but the longest token, repeated.
        let text = " ".repeat(MAX_PREFIX_CHARS + 10_000);
        let prefix: String = text.chars().take(MAX_PREFIX_CHARS).collect();
        let whole = truncate(&text, MAX_INPUT_TOKENS);
        let cut = truncate(&prefix, MAX_INPUT_TOKENS);
        assert_eq!((&whole.text, whole.tokens), (&cut.text, cut.tokens));
        let owned = truncate_owned(prefix, MAX_INPUT_TOKENS);
        assert_eq!((&owned.text, owned.tokens), (&whole.text, whole.tokens));
    }

    #[test]
    fn blank_texts() {
        assert!(is_blank(""));
        assert!(is_blank(" \n\t "));
        assert!(!is_blank(" § 1 "));
    }
}
