//! Connection liveness: the node's millisecond clock and one heartbeat task per node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::hub::Hub;
use crate::outbox::Congestion;
use crate::protocol::ws;

/// Milliseconds since the node started: what connections stamp their activity with (an
/// atomic `u64` per connection instead of an `Instant`).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { origin: Instant::now() }
    }
}

impl Clock {
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `at` on this clock.
    #[inline]
    pub fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }
}

/// One task per node instead of a timer per connection: it visits one hub shard every
/// `interval / shards`, so each connection is seen once per interval. A connection silent
/// for two intervals is closed (4000); the others get a WebSocket ping. Ends at `draining`.
/// While the node is congested its sessions are not reading, so silence proves nothing:
/// nobody is closed for it then.
pub async fn run(
    hub: Arc<Hub>,
    clock: Clock,
    interval: Duration,
    congestion: Arc<Congestion>,
    draining: WaitForCancellationFutureOwned,
) {
    let shards = hub.shard_count().max(1);
    let mut tick = tokio::time::interval((interval / shards as u32).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silent = 2 * interval.as_millis() as u64;
    let mut shard = 0;
    tokio::pin!(draining);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut draining => return,
        }
        let now = clock.now_ms();
        let judge = !congestion.is_congested();
        hub.for_each_in_shard(shard, |conn| {
            if judge && now.saturating_sub(conn.last_seen()) >= silent {
                conn.outbox.close_with(ws::close_frame(ws::close::HEARTBEAT_TIMEOUT, "heartbeat timeout"));
            } else {
                let _ = conn.outbox.push(ws::ping_frame());
            }
        });
        shard = (shard + 1) % shards;
    }
}
