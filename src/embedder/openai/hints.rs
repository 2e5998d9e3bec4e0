//! The waits OpenAI's answers ask for: `retry-after-ms`, `retry-after`, the
//! `x-ratelimit-reset-*` Go durations, and the "try again in 2.812s" of a 429.

use reqwest::header::HeaderMap;
use std::time::Duration;

pub(super) fn header_duration(headers: &HeaderMap, name: &str) -> Option<Duration> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    let secs = |x: f64| Duration::try_from_secs_f64(x).ok();
    match name {
        "retry-after-ms" => v.parse::<f64>().ok().and_then(|ms| secs(ms / 1000.0)),
        "retry-after" => v.parse::<f64>().ok().and_then(secs),
        _ => parse_go_duration(v),
    }
}

/// The wait a 429 asks for: explicit retry headers first, then the reset of the
/// exhausted limit, then the "try again in 2.812s" in the message.
pub(super) fn retry_hint(headers: &HeaderMap, message: &str) -> Option<Duration> {
    header_duration(headers, "retry-after-ms")
        .or_else(|| header_duration(headers, "retry-after"))
        .or_else(|| {
            let exhausted = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    == Some(0)
            };
            if exhausted("x-ratelimit-remaining-tokens") {
                header_duration(headers, "x-ratelimit-reset-tokens")
            } else if exhausted("x-ratelimit-remaining-requests") {
                header_duration(headers, "x-ratelimit-reset-requests")
            } else {
                None
            }
        })
        .or_else(|| {
            let at = message.find("try again in ")? + "try again in ".len();
            let rest = &message[at..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            parse_go_duration(rest[..end].trim_end_matches('.'))
        })
}

/// Parses Go-style durations as OpenAI sends them in `x-ratelimit-reset-*`:
/// `1s`, `6m0s`, `20ms`, `2.812s`, `1h2m3s`.
pub(super) fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}
