//! Connection limits: how many WebSockets the server holds, in all and per
//! client IP. A slot is taken at the handshake and given back when the
//! handler task ends (a drop guard, so errors and panics give it back too).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use http::StatusCode;

use crate::extract::Rejection;

#[derive(Debug, Default)]
pub(crate) struct ConnLimiter {
    max_total: Option<usize>,
    max_per_ip: Option<usize>,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one connection slot until dropped.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    /// The client's entry in the per-IP counts; `None` when there is no
    /// per-IP limit (then nothing is counted per IP, and no lock is taken).
    ip: Option<IpAddr>,
}

impl ConnLimiter {
    pub(crate) fn new(max_total: Option<usize>, max_per_ip: Option<usize>) -> Self {
        ConnLimiter {
            max_total,
            max_per_ip,
            ..Default::default()
        }
    }

    /// Open WebSocket connections.
    #[cfg(test)]
    pub(crate) fn current(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Takes a slot for `ip`: 503 over the global limit, 429 over the
    /// per-IP limit.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Rejection> {
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max_total.is_some_and(|max| total > max) {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "connection limit reached ({} connections)",
                    self.max_total.unwrap_or_default()
                ),
            ));
        }
        let Some(max_per_ip) = self.max_per_ip else {
            return Ok(ConnSlot {
                limiter: Arc::clone(self),
                ip: None,
            });
        };
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many connections from {ip} (limit {max_per_ip})"),
            ));
        }
        *n += 1;
        Ok(ConnSlot {
            limiter: Arc::clone(self),
            ip: Some(ip),
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut per_ip = self
                .limiter
                .per_ip
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_trigger_exactly_at_threshold_and_slots_return() {
        let l = Arc::new(ConnLimiter::new(Some(3), Some(2)));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(
            l.acquire(a).unwrap_err().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(
            l.acquire(b).unwrap_err().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(l.current(), 3);
        drop(s1);
        assert_eq!(l.current(), 2);
        let _s4 = l.acquire(b).unwrap();
    }

    #[test]
    fn without_a_per_ip_limit_only_the_total_is_counted() {
        let l = Arc::new(ConnLimiter::new(Some(2), None));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(
            l.acquire(a).unwrap_err().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(l.per_ip.lock().unwrap().is_empty());
        drop(s1);
        assert_eq!(l.current(), 1);
        let _s3 = l.acquire(a).unwrap();
    }
}
