//! Packing a batch's texts into as few embeddings requests as the provider allows.

/// Splits items (with their token counts) into consecutive groups of at most
/// `max_inputs` items and `max_tokens` tokens, keeping their order.
pub fn pack(
    token_counts: &[usize],
    max_inputs: usize,
    max_tokens: usize,
) -> Vec<std::ops::Range<usize>> {
    let max_inputs = max_inputs.max(1);
    let mut groups = Vec::new();
    let mut start = 0;
    let mut tokens = 0;
    for (i, &n) in token_counts.iter().enumerate() {
        let full = i - start >= max_inputs || (i > start && tokens + n > max_tokens);
        if full {
            groups.push(start..i);
            start = i;
            tokens = 0;
        }
        tokens += n;
    }
    if start < token_counts.len() {
        groups.push(start..token_counts.len());
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respects_count_and_token_limits() {
        assert_eq!(pack(&[1; 5], 2, 100), vec![0..2, 2..4, 4..5]);
        assert_eq!(pack(&[8000, 8000, 8000], 100, 16_000), vec![0..2, 2..3]);
        assert!(pack(&[], 10, 10).is_empty());
        let many = vec![8191; 100];
        for g in pack(&many, 100, 300_000) {
            assert!(g.len() * 8191 <= 300_000);
        }
    }
}
