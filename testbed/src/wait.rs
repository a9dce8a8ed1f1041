//! Polling with a time limit.

use std::time::{Duration, Instant};

/// Calls `done` every `every` until it returns true or `limit` has passed
/// (it is called once more at the limit). Returns how long that took, or
/// None when `done` never returned true.
pub fn wait_until(
    limit: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let expired = start.elapsed() >= limit;
        if done() {
            return Some(start.elapsed());
        }
        if expired {
            return None;
        }
        std::thread::sleep(every.min(limit.saturating_sub(start.elapsed())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_when_done_or_at_the_limit() {
        let mut calls = 0;
        let took = wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            calls == 3
        });
        assert!(took.is_some_and(|t| t < Duration::from_secs(5)));
        assert_eq!(calls, 3);

        let mut calls = 0;
        let limit = Duration::from_millis(30);
        let start = Instant::now();
        let never = wait_until(limit, Duration::from_millis(5), || {
            calls += 1;
            false
        });
        assert_eq!(never, None);
        assert!(start.elapsed() >= limit);
        assert!(calls >= 2, "{calls}");
        // A zero limit still asks once.
        assert!(wait_until(Duration::ZERO, Duration::ZERO, || true).is_some());
        let mut calls = 0;
        let once = wait_until(Duration::ZERO, Duration::from_secs(1), || {
            calls += 1;
            false
        });
        assert_eq!((once, calls), (None, 1));
    }
}
