//! Crash points for the crash-safety tests. Built only with the `failpoints`
//! feature: `BACKFILL_CRASH_AT=<point>` kills the process with SIGKILL when it
//! reaches that point, so a test can check that a redelivery repairs the state.
//! Without the feature this compiles to nothing.

/// Kills the process here when `BACKFILL_CRASH_AT` names `point`.
#[inline]
pub fn crash_point(point: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("BACKFILL_CRASH_AT").is_ok_and(|p| p == point) {
        tracing::warn!(point, "failpoint: killing this process");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
        // SIGKILL takes effect before `kill` returns; never go on past a crash point.
        loop {
            std::thread::park();
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = point;
}
