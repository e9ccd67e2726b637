//! Replay protection per sender: a boot epoch that only grows, and a sliding window over the
//! datagram sequence numbers of the current epoch (the IPsec anti-replay scheme).

/// How many sequence numbers below the highest one seen are still accepted (once each), so
/// datagrams reordered on the way are not refused. A sender numbers all its datagrams in one
/// sequence and each receiver sees only those sent to it, so the window spans far more than 128
/// datagrams addressed to one receiver.
pub const REPLAY_WINDOW: u64 = 128;

/// Why a datagram was judged a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "boot epoch {epoch} is older than the current {current} (a datagram from before a restart)"
    )]
    OldEpoch { epoch: u64, current: u64 },
    #[error("sequence number {seq} was already received")]
    Duplicate { seq: u64 },
    #[error(
        "sequence number {seq} is more than {REPLAY_WINDOW} behind the highest seen, {highest}"
    )]
    TooOld { seq: u64, highest: u64 },
}

/// What one receiver remembers of one sender. Feed it only authenticated datagrams: a forged one
/// must not move the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayGuard {
    epoch: u64,
    highest: u64,
    /// Bit `i` set: sequence number `highest - i` was received.
    seen: u128,
    started: bool,
}

impl ReplayGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `(epoch, seq)` would be accepted, without recording it.
    pub fn check(&self, epoch: u64, seq: u64) -> Result<(), ReplayError> {
        if !self.started || epoch > self.epoch {
            return Ok(());
        }
        if epoch < self.epoch {
            return Err(ReplayError::OldEpoch {
                epoch,
                current: self.epoch,
            });
        }
        if seq > self.highest {
            return Ok(());
        }
        let behind = self.highest - seq;
        if behind >= REPLAY_WINDOW {
            return Err(ReplayError::TooOld {
                seq,
                highest: self.highest,
            });
        }
        if self.seen & (1u128 << behind) != 0 {
            return Err(ReplayError::Duplicate { seq });
        }
        Ok(())
    }

    /// Checks `(epoch, seq)` and, when it is fresh, records it.
    pub fn accept(&mut self, epoch: u64, seq: u64) -> Result<(), ReplayError> {
        self.check(epoch, seq)?;
        if !self.started || epoch > self.epoch {
            *self = ReplayGuard {
                epoch,
                highest: seq,
                seen: 1,
                started: true,
            };
        } else if seq > self.highest {
            let ahead = seq - self.highest;
            self.seen = if ahead >= REPLAY_WINDOW {
                0
            } else {
                self.seen << ahead
            } | 1;
            self.highest = seq;
        } else {
            self.seen |= 1u128 << (self.highest - seq);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_sequence_numbers_pass_once() {
        let mut g = ReplayGuard::new();
        for seq in 0..300 {
            g.accept(5, seq).unwrap();
            assert_eq!(g.accept(5, seq), Err(ReplayError::Duplicate { seq }));
        }
    }

    #[test]
    fn reordering_within_the_window_is_fine() {
        let mut g = ReplayGuard::new();
        g.accept(1, 10).unwrap();
        g.accept(1, 200).unwrap();
        g.accept(1, 199).unwrap();
        g.accept(1, 73).unwrap();
        assert_eq!(
            g.accept(1, 72),
            Err(ReplayError::TooOld {
                seq: 72,
                highest: 200
            })
        );
        assert_eq!(g.accept(1, 73), Err(ReplayError::Duplicate { seq: 73 }));
        assert_eq!(g.accept(1, 199), Err(ReplayError::Duplicate { seq: 199 }));
        g.accept(1, 150).unwrap();
    }

    #[test]
    fn a_restart_opens_a_new_epoch_and_closes_the_old() {
        let mut g = ReplayGuard::new();
        g.accept(100, 5000).unwrap();
        g.accept(200, 0).unwrap();
        assert_eq!(
            g.accept(100, 5001),
            Err(ReplayError::OldEpoch {
                epoch: 100,
                current: 200
            })
        );
        g.accept(200, 1).unwrap();
    }

    #[test]
    fn a_large_jump_clears_the_window() {
        let mut g = ReplayGuard::new();
        g.accept(1, 0).unwrap();
        g.accept(1, 1000).unwrap();
        assert!(g.accept(1, 0).is_err());
        g.accept(1, 999).unwrap();
        assert!(g.accept(1, 1000).is_err());
    }

    #[test]
    fn check_does_not_record() {
        let mut g = ReplayGuard::new();
        g.check(1, 1).unwrap();
        g.check(1, 1).unwrap();
        g.accept(1, 1).unwrap();
        assert!(g.check(1, 1).is_err());
    }

    #[test]
    fn matches_a_set_of_seen_numbers() {
        // Against a model: accept iff not seen and within the window of the running maximum.
        let mut g = ReplayGuard::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut max: Option<u64> = None;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let seq = max.unwrap_or(0).saturating_sub(150) + x % 180;
            let model_ok =
                !seen.contains(&seq) && max.is_none_or(|m| seq > m || m - seq < REPLAY_WINDOW);
            assert_eq!(g.accept(9, seq).is_ok(), model_ok, "seq {seq} max {max:?}");
            if model_ok {
                seen.insert(seq);
                max = Some(max.map_or(seq, |m| m.max(seq)));
            }
        }
    }
}
