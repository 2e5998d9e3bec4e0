use super::*;

#[tokio::test(start_paused = true)]
async fn paces_to_the_token_budget() {
    let g = Governor::new(
        Budget {
            tokens_per_minute: Some(6_000),
            requests_per_minute: None,
            shares: 1,
        },
        8,
    );
    let start = Instant::now();
    // The bucket starts full; 12,000 tokens take another minute.
    for _ in 0..12 {
        drop(g.acquire(1_000, None).await.unwrap());
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(59) && took <= Duration::from_secs(62),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_and_halves_concurrency() {
    let g = Governor::new(Budget::default(), 64);
    for _ in 0..40 {
        g.observe(RateSignals::default(), None);
    }
    let before = g.concurrency();
    assert!(before > 4, "{before}");
    g.observe(RateSignals::default(), Some(Duration::from_secs(2)));
    assert_eq!(g.concurrency(), before / 2);
    let start = Instant::now();
    drop(g.acquire(1, None).await.unwrap());
    assert!(start.elapsed() >= Duration::from_secs(2));
    let soon = Instant::now() + Duration::from_millis(10);
    g.observe(RateSignals::default(), Some(Duration::from_secs(5)));
    assert!(g.acquire(1, Some(soon)).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn learns_limits_and_remaining_from_headers() {
    let g = Governor::new(Budget::default(), 8);
    let h = RateSignals {
        limit_tokens: Some(60_000.0),
        remaining_tokens: Some(0.0),
        ..RateSignals::default()
    };
    g.observe(h, None);
    let start = Instant::now();
    // 1,000 tokens refill in one second at 60,000 a minute.
    drop(g.acquire(1_000, None).await.unwrap());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(990) && took <= Duration::from_millis(1100),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_share_paces_at_its_part_of_the_limit_and_of_what_remains() {
    let g = Governor::new(
        Budget {
            shares: 3,
            ..Budget::default()
        },
        8,
    );
    let h = RateSignals {
        limit_tokens: Some(180_000.0),
        remaining_tokens: Some(3_000.0),
        ..RateSignals::default()
    };
    g.observe(h, None);
    // 1,000 tokens of the remaining 3,000 are this share's; the next 1,000
    // refill in one second at a third of 180,000 a minute.
    let start = Instant::now();
    drop(g.acquire(1_000, None).await.unwrap());
    assert!(start.elapsed() < Duration::from_millis(50));
    drop(g.acquire(1_000, None).await.unwrap());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(990) && took <= Duration::from_millis(1100),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_are_served_in_arrival_order() {
    let g = std::sync::Arc::new(Governor::new(
        Budget {
            tokens_per_minute: Some(6_000),
            ..Budget::default()
        },
        8,
    ));
    drop(g.acquire(6_000, None).await.unwrap());
    let served = |tokens: u64| {
        let g = g.clone();
        tokio::spawn(async move {
            drop(g.acquire(tokens, None).await.unwrap());
            Instant::now()
        })
    };
    let start = Instant::now();
    let big = served(3_000);
    tokio::task::yield_now().await;
    let small = served(100);
    let (big, small) = (big.await.unwrap(), small.await.unwrap());
    // At 100 tokens a second the small one alone would pass after 1 s.
    assert!(big - start >= Duration::from_secs(30), "{:?}", big - start);
    assert!(small >= big);
}

#[tokio::test]
async fn in_flight_is_bounded_by_concurrency() {
    let g = Governor::new(Budget::default(), 2);
    let a = g.acquire(1, None).await.unwrap();
    let _b = g.acquire(1, None).await.unwrap();
    let soon = Instant::now() + Duration::from_millis(50);
    let third = tokio::time::timeout(Duration::from_millis(50), g.acquire(1, Some(soon))).await;
    assert!(third.is_err() || third.is_ok_and(|r| r.is_err()));
    drop(a);
    assert!(g.acquire(1, None).await.is_ok());
}
