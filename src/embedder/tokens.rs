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

    pub fn chunks(self, text: &str, limit: usize) -> Vec<Prepared<'_>> {
        match self {
            Tokenizer::Cl100k => chunks(text, limit),
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

/// How far back from a chunk's cut a boundary is looked for, as a divisor of
/// the chunk: a paragraph break in its last quarter, else a sentence end in
/// its last tenth; failing both, the chunk ends at the token limit.
const PARAGRAPH_WINDOW: usize = 4;
const SENTENCE_WINDOW: usize = 10;

/// Splits `text` into consecutive chunks of at most `limit` tokens each,
/// which together are the whole text: the OpenAI cookbook's way to embed a
/// text over the input limit. A chunk that has to be cut ends after a
/// paragraph break or a sentence end near the limit, so a chunk rarely
/// stops mid-sentence. Blank chunks (whitespace between two cuts) are
/// left out: they carry no meaning and the API rejects an empty input.
pub fn chunks(text: &str, limit: usize) -> Vec<Prepared<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let fit = truncate(rest, limit);
        if !fit.truncated {
            if !is_blank(rest) {
                out.push(fit);
            }
            break;
        }
        let cut = fit.text.len();
        let end = boundary(&rest[..cut]).unwrap_or(cut).max(1);
        let end = (end..=rest.len())
            .find(|&i| rest.is_char_boundary(i))
            .unwrap_or(rest.len());
        let (chunk, tail) = rest.split_at(end);
        if !is_blank(chunk) {
            out.push(Prepared {
                text: Cow::Borrowed(chunk),
                tokens: count(chunk),
                truncated: true,
            });
        }
        rest = tail;
    }
    out
}

/// The end of the last paragraph break in the last quarter of `cut`, or
/// else of the last sentence in its last tenth.
fn boundary(cut: &str) -> Option<usize> {
    let last = |patterns: &[&str], divisor: usize| {
        let from = cut.len() - cut.len() / divisor;
        let from = (from..=cut.len()).find(|&i| cut.is_char_boundary(i))?;
        patterns
            .iter()
            .filter_map(|p| cut[from..].rfind(p).map(|i| from + i + p.len()))
            .max()
    };
    last(&["\n\n"], PARAGRAPH_WINDOW)
        .or_else(|| last(&[". ", ".\n", "! ", "? ", "; "], SENTENCE_WINDOW))
}

/// The token-weighted mean of `vectors`, normalised to unit length: one
/// vector for a text embedded in chunks, as the OpenAI cookbook combines
/// them. A single vector is returned as it is.
pub fn weighted_mean(vectors: &[(&[f32], usize)]) -> Vec<f32> {
    if let [(only, _)] = vectors {
        return only.to_vec();
    }
    let dims = vectors.first().map_or(0, |(v, _)| v.len());
    let mut mean = vec![0f64; dims];
    for (v, weight) in vectors {
        for (m, x) in mean.iter_mut().zip(v.iter()) {
            *m += f64::from(*x) * *weight as f64;
        }
    }
    let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
    mean.iter()
        .map(|x| if norm > 0.0 { (x / norm) as f32 } else { 0.0 })
        .collect()
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
    fn chunks_cover_the_text_and_end_at_paragraphs() {
        // 451 tokens a paragraph: two fill 90% of a chunk of 1,000.
        let paragraph = "Departementet kan gi forskrift om særlige regler for søknad. ".repeat(25);
        let text = format!("{paragraph}\n\n").repeat(40);
        let parts = chunks(&text, 1000);
        assert!(parts.len() > 1);
        let joined: String = parts.iter().map(|p| p.text.as_ref()).collect();
        assert_eq!(joined, text, "the chunks are the whole text, in order");
        for p in &parts {
            assert!(
                p.tokens <= 1000 && p.tokens == count(&p.text),
                "{}",
                p.tokens
            );
        }
        for p in &parts[..parts.len() - 1] {
            assert!(
                p.text.ends_with("\n\n"),
                "{:?}",
                &p.text[p.text.len() - 20..]
            );
        }
        let short = chunks("Lov om kommuner", MAX_INPUT_TOKENS);
        assert_eq!(short.len(), 1);
        assert!(!short[0].truncated);
        assert!(chunks("  \n ", 10).is_empty());
    }

    #[test]
    fn chunks_without_boundaries_are_cut_at_the_limit() {
        let text = "æøå".repeat(5000);
        let parts = chunks(&text, 300);
        let joined: String = parts.iter().map(|p| p.text.as_ref()).collect();
        assert_eq!(joined, text);
        assert!(parts.iter().all(|p| p.tokens <= 300));
        assert!(parts[0].tokens > 290, "{}", parts[0].tokens);
    }

    #[test]
    fn the_mean_is_weighted_by_tokens_and_of_unit_length() {
        let (a, b) = ([1.0f32, 0.0], [0.0f32, 1.0]);
        let m = weighted_mean(&[(&a, 3), (&b, 1)]);
        let expected = [3.0 / 10f32.sqrt(), 1.0 / 10f32.sqrt()];
        assert!(
            (m[0] - expected[0]).abs() < 1e-6 && (m[1] - expected[1]).abs() < 1e-6,
            "{m:?}"
        );
        assert_eq!(weighted_mean(&[(&[0.6, 0.8], 5)]), vec![0.6, 0.8]);
    }

    #[test]
    fn blank_texts() {
        assert!(is_blank(""));
        assert!(is_blank(" \n\t "));
        assert!(!is_blank(" § 1 "));
    }
}
