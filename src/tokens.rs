//! cl100k_base token counting and truncation (the tokenizer of OpenAI's
//! text-embedding-3 and ada-002 models).
//!
//! `bpe-openai` over `tiktoken-rs`: it counts with a limit in time proportional
//! to the limit, not the text, which is what truncating long documents needs.

use std::borrow::Cow;

/// OpenAI rejects inputs over 8192 tokens; one token of margin, as OpenAI's own
/// cookbook advises.
pub const MAX_INPUT_TOKENS: usize = 8191;

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
    fn blank_texts() {
        assert!(is_blank(""));
        assert!(is_blank(" \n\t "));
        assert!(!is_blank(" § 1 "));
    }
}
