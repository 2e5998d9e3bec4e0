//! What tokens cost, per model (USD per million input tokens, OpenAI list prices).

pub fn price_per_million_tokens(model: &str) -> f64 {
    match model {
        "text-embedding-3-large" => 0.13,
        "text-embedding-ada-002" => 0.10,
        _ => 0.02,
    }
}

pub fn cost_usd(tokens: u64, model: &str) -> f64 {
    tokens as f64 * price_per_million_tokens(model) / 1_000_000.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_guides_estimate() {
        // 41,934 documents at ~1,250 tokens cost about $1.04 with text-embedding-3-small.
        let c = super::cost_usd(52_000_000, "text-embedding-3-small");
        assert!((c - 1.04).abs() < 1e-9);
    }
}
