//! Presence upkeep: the loop that runs [`Presence::maintain`] and acts on what it reports.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::warn;

use crate::backend::{Broker, Presence, chain};
use crate::hub::Hub;
use crate::protocol::ws;
use crate::router::Router;

/// `(group, user)` pairs whose presence `leave` is due.
type Left = Vec<(Box<str>, Box<str>)>;

/// What the loop acts on.
pub struct Parts {
    pub presence: Arc<dyn Presence>,
    pub broker: Arc<dyn Broker>,
    pub router: Arc<Router>,
    pub hub: Arc<Hub>,
    pub stats: super::Stats,
}

/// Every `period` until `draining`: refresh the lease, sweep dead nodes, re-sync after an
/// outage; then send the presence `leave` events due, close connections whose anonymous id
/// was given away while this node was presumed dead, and delete swept nodes' queues.
pub async fn run(parts: Parts, period: Duration, draining: WaitForCancellationFutureOwned) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // `leave` events held back until every live node has re-registered (one lease).
    let mut later: VecDeque<(Instant, Left)> = VecDeque::new();
    let mut failing = false;
    tokio::pin!(draining);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut draining => return,
        }
        while later.front().is_some_and(|(due, _)| *due <= Instant::now()) {
            if let Some((_, left)) = later.pop_front() {
                for (group, user) in &left {
                    parts.router.presence(group, user, false).await;
                }
            }
        }
        parts.presence.report(parts.stats.info());
        let m = match parts.presence.maintain().await {
            Ok(m) => m,
            Err(e) => {
                if !failing {
                    warn!(error = %chain(&e), "presence maintenance failed");
                    failing = true;
                }
                continue;
            }
        };
        if failing {
            warn!("presence store reachable again");
            failing = false;
        }
        for (group, user) in &m.left {
            parts.router.presence(group, user, false).await;
        }
        if !m.left_later.is_empty() {
            later.push_back((Instant::now() + period * 3, m.left_later));
        }
        for user in &m.conflicts {
            warn!(%user, "anonymous id was reassigned while this node was presumed dead; closing its connection");
            for conn in parts.hub.user_conns(user) {
                conn.outbox.close_with(ws::close_frame(ws::close::TRY_AGAIN_LATER, "session lost, reconnect"));
            }
        }
        for dead in &m.swept {
            parts.broker.remove_node(dead).await;
        }
    }
}
