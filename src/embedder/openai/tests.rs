use super::hints::parse_go_duration;
use super::*;
use reqwest::header::{HeaderMap, HeaderValue};
use std::time::Duration;

#[test]
fn classifies_openai_errors() {
    let h = HeaderMap::new();
    let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
    assert!(matches!(
        classify(429, &h, quota, &NAMES),
        EmbedError::QuotaExhausted { .. }
    ));
    assert!(!classify(429, &h, quota, &NAMES).is_retryable());
    let limited = br#"{"error":{"message":"Rate limit reached. Please try again in 2.812s. Visit","code":"rate_limit_exceeded"}}"#;
    let e = classify(429, &h, limited, &NAMES);
    assert!(e.is_retryable());
    assert_eq!(e.server_hint(), Some(Duration::from_millis(2812)));
    let long = br#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":null}}"#;
    assert!(matches!(
        classify(400, &h, long, &NAMES),
        EmbedError::BadRequest { status: 400, .. }
    ));
    assert!(classify(503, &h, b"upstream", &NAMES).is_retryable());
    let empty = br#"{"error":{"message":"'$.input' is invalid. Please check the API reference","code":null}}"#;
    assert!(matches!(
        classify(400, &h, empty, &NAMES),
        EmbedError::BadRequest { .. }
    ));
    let model = br#"{"error":{"message":"The model `text-embedding-4` does not exist or you do not have access to it.","code":"model_not_found"}}"#;
    let e = classify(404, &h, model, &NAMES);
    assert!(matches!(e, EmbedError::InvalidRequest { status: 404, .. }));
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("OPENAI_EMBEDDING_MODEL"), "{e}");
    let dims = br#"{"error":{"message":"Invalid value for 'dimensions' = 4000.","param":"dimensions","code":null}}"#;
    assert!(matches!(
        classify(400, &h, dims, &NAMES),
        EmbedError::InvalidRequest { .. }
    ));
    let bad_key = br#"{"error":{"message":"Incorrect API key provided: sk-abc***wxyz. You can find","code":"invalid_api_key"}}"#;
    let e = classify(401, &h, bad_key, &NAMES);
    assert!(!e.is_retryable());
    assert!(!e.to_string().contains("wxyz"), "{e}");
}

#[test]
fn retry_headers_win_over_the_message() {
    let mut h = HeaderMap::new();
    h.insert("retry-after-ms", HeaderValue::from_static("1500"));
    assert_eq!(
        retry_hint(&h, "try again in 9s."),
        Some(Duration::from_millis(1500))
    );
    let mut h = HeaderMap::new();
    h.insert(
        "x-ratelimit-remaining-tokens",
        HeaderValue::from_static("0"),
    );
    h.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("6m0s"));
    assert_eq!(retry_hint(&h, ""), Some(Duration::from_secs(360)));
    let mut h = HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_static("1e300"));
    assert_eq!(
        retry_hint(&h, ""),
        None,
        "an absurd hint is ignored, not a panic"
    );
    let mut h = HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_static("3"));
    let e = classify(503, &h, b"busy", &NAMES);
    assert_eq!(e.server_hint(), Some(Duration::from_secs(3)));
}

#[test]
fn flat_errors_of_compatible_servers_read_as_their_message() {
    let h = HeaderMap::new();
    let tei = br#"{"error":"Input validation error: inputs must have less than 512 tokens","error_type":"Validation"}"#;
    assert!(matches!(
        classify(413, &h, tei, &NAMES),
        EmbedError::BadRequest { status: 413, .. }
    ));
}

#[test]
fn base64_vectors_are_little_endian_f32() {
    let floats = [0.5f32, -1.25, 3.0];
    let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
    let s = base64::engine::general_purpose::STANDARD.encode(bytes);
    assert_eq!(decode_base64_f32(&s).unwrap(), floats);
    assert!(decode_base64_f32("AAA=").is_err());
}

#[test]
fn go_durations() {
    assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
    assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
    assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
    assert_eq!(
        parse_go_duration("2.812s"),
        Some(Duration::from_millis(2812))
    );
    assert_eq!(parse_go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
    assert_eq!(parse_go_duration("soon"), None);
    assert_eq!(parse_go_duration(""), None);
    assert_eq!(parse_go_duration("99999999999999999999h"), None);
}
