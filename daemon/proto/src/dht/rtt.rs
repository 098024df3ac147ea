//! Round-trip estimates for request timeouts, as TCP (RFC 6298) and QUIC (RFC 9002) keep them:
//! a smoothed round trip and its mean deviation, and a timeout of the two with a floor and a
//! ceiling.

use core::time::Duration;

use super::{REQUEST_TIMEOUT, RTO_MIN};

/// A smoothed round trip and its variation, in microseconds (`srtt` 0: no sample yet). Eight
/// bytes, kept in every routing-table entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rtt {
    srtt: u32,
    var: u32,
}

impl Rtt {
    /// Adds a measured round trip.
    pub fn sample(&mut self, rtt: Duration) {
        let r = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX).max(1);
        if self.srtt == 0 {
            self.srtt = r;
            self.var = r / 2;
        } else {
            self.var = (3 * u64::from(self.var) / 4 + u64::from(self.srtt.abs_diff(r)) / 4) as u32;
            self.srtt = (7 * u64::from(self.srtt) / 8 + u64::from(r) / 8) as u32;
        }
    }

    /// The smoothed round trip, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        (self.srtt > 0).then(|| Duration::from_micros(self.srtt.into()))
    }

    /// How long to wait for an answer before asking someone else: the smoothed round trip
    /// plus four deviations, within [`RTO_MIN`] and [`REQUEST_TIMEOUT`]; `None` before the
    /// first sample.
    pub fn rto(&self) -> Option<Duration> {
        (self.srtt > 0).then(|| {
            Duration::from_micros(u64::from(self.srtt) + 4 * u64::from(self.var))
                .clamp(RTO_MIN, REQUEST_TIMEOUT)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_round_trip_within_its_bounds() {
        let mut r = Rtt::default();
        assert_eq!(r.rto(), None);
        r.sample(Duration::from_millis(100));
        // First sample: 100 + 4 x 50.
        assert_eq!(r.rto(), Some(Duration::from_millis(300)));
        for _ in 0..50 {
            r.sample(Duration::from_millis(100));
        }
        // Steady: the deviation decays, the floor holds.
        assert_eq!(r.rto(), Some(RTO_MIN));
        assert_eq!(r.srtt(), Some(Duration::from_millis(100)));
        for _ in 0..50 {
            r.sample(Duration::from_secs(5));
        }
        assert_eq!(r.rto(), Some(REQUEST_TIMEOUT));
        // A jittery path waits longer than a steady one with the same mean.
        let (mut steady, mut jitter) = (Rtt::default(), Rtt::default());
        for i in 0..40 {
            steady.sample(Duration::from_millis(200));
            jitter.sample(Duration::from_millis(if i % 2 == 0 { 50 } else { 350 }));
        }
        assert!(jitter.rto().unwrap() > steady.rto().unwrap());
    }
}
