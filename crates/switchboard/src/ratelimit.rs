//! Token buckets for per-connection message rates and control-frame floods.
//!
//! A bucket holds up to `burst` tokens and refills at `per_second`; each
//! message takes one. Time is passed in, so the arithmetic is tested
//! without sleeping.

use std::time::{Duration, Instant};

/// What happens to a message over the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitPolicy {
    /// Close the connection with 1008 "rate limit exceeded" (the default).
    #[default]
    Close,
    /// Drop the message and return an error to the handler
    /// ([`Error::is_rate_limited`](crate::Error::is_rate_limited)), which
    /// may tell the client; the socket stays open.
    Drop,
}

/// A per-connection message rate limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained messages per second.
    pub per_second: f64,
    /// Messages allowed in a burst above the sustained rate.
    pub burst: u32,
    /// What to do with a message over the limit.
    pub policy: RateLimitPolicy,
}

impl RateLimit {
    /// `per_second` sustained, `burst` at once, closing on breach.
    pub fn new(per_second: f64, burst: u32) -> RateLimit {
        RateLimit {
            per_second,
            burst,
            policy: RateLimitPolicy::Close,
        }
    }

    /// Sets the policy on breach.
    pub fn policy(mut self, policy: RateLimitPolicy) -> RateLimit {
        self.policy = policy;
        self
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(per_second: f64, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        TokenBucket {
            capacity,
            per_second: per_second.max(0.0),
            tokens: capacity,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts events in fixed one-second windows (control-frame flood check).
#[derive(Debug, Clone)]
pub(crate) struct WindowCounter {
    limit: u32,
    count: u32,
    window_start: Instant,
}

impl WindowCounter {
    pub(crate) fn new(limit: u32, now: Instant) -> Self {
        WindowCounter {
            limit,
            count: 0,
            window_start: now,
        }
    }

    /// Counts one event; false once the window's limit is passed.
    pub(crate) fn hit(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        self.count <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5, t0);
        for _ in 0..5 {
            assert!(b.try_take(t0));
        }
        assert!(
            !b.try_take(t0),
            "the 6th message in a burst of 5 is refused"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(50)));
        assert!(
            b.try_take(t0 + Duration::from_millis(100)),
            "one token per 100 ms at 10/s"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        // Long idle refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.try_take(later));
        }
        assert!(!b.try_take(later));
    }

    #[test]
    fn window_counter_limits_per_second() {
        let t0 = Instant::now();
        let mut w = WindowCounter::new(3, t0);
        assert!(w.hit(t0) && w.hit(t0) && w.hit(t0));
        assert!(!w.hit(t0));
        assert!(w.hit(t0 + Duration::from_secs(1)));
    }
}
