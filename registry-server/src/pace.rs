//! How fast a request body must arrive: no gap longer than the idle timeout, and on
//! average at least a minimum rate over each idle-timeout-long window (as Apache's
//! `mod_reqtimeout` `MinRate`), so a client trickling a byte now and then cannot hold a
//! connection and an upload session for ever.

use std::future::Future;
use std::time::{Duration, Instant};

/// The pace a request body must keep (from the config's `limits`).
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// The longest wait for the next bytes.
    pub idle: Duration,
    /// Bytes per second, averaged over windows of `idle`; 0 for no minimum.
    pub min_rate: u64,
}

/// Why a body was abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TooSlow {
    #[error("client sent no data for too long")]
    Stalled,
    #[error("client sends its request body too slowly (under {0} bytes per second)")]
    Trickled(u64),
}

/// One body's progress against its [`BodyPace`].
#[derive(Debug)]
pub struct PaceMeter {
    pace: BodyPace,
    window_start: Instant,
    window_bytes: u64,
}

impl BodyPace {
    pub fn meter(self) -> PaceMeter {
        PaceMeter {
            pace: self,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }
}

impl PaceMeter {
    /// Waits for the next read, at most the idle timeout.
    pub async fn next<F: Future>(&mut self, read: F) -> Result<F::Output, TooSlow> {
        tokio::time::timeout(self.pace.idle, read)
            .await
            .map_err(|_| TooSlow::Stalled)
    }

    /// Counts `n` bytes received; fails when a whole window went by below the minimum rate.
    pub fn received(&mut self, n: usize) -> Result<(), TooSlow> {
        self.window_bytes += n as u64;
        let elapsed = self.window_start.elapsed();
        if self.pace.min_rate == 0 || elapsed < self.pace.idle {
            return Ok(());
        }
        let needed = (self.pace.min_rate as f64 * elapsed.as_secs_f64()) as u64;
        if self.window_bytes < needed {
            return Err(TooSlow::Trickled(self.pace.min_rate));
        }
        self.window_start = Instant::now();
        self.window_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trickle_fails_after_one_window_and_a_steady_body_does_not() {
        let pace = BodyPace {
            idle: Duration::from_secs(10),
            min_rate: 100,
        };
        let mut trickle = pace.meter();
        let mut steady = pace.meter();
        let mut failed = None;
        for second in 0..30 {
            trickle.window_start -= Duration::from_secs(1);
            steady.window_start -= Duration::from_secs(1);
            if let Err(e) = trickle.received(1) {
                failed.get_or_insert((second, e));
            }
            steady.received(150).unwrap();
        }
        assert_eq!(failed, Some((9, TooSlow::Trickled(100))));
        let mut idle = BodyPace {
            idle: Duration::from_millis(10),
            ..pace
        }
        .meter();
        let r = idle.next(std::future::pending::<()>()).await;
        assert_eq!(r, Err(TooSlow::Stalled));
    }
}
