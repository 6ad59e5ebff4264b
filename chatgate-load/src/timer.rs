//! Time: one clock per process, and a sub-millisecond timer for send schedules.
//!
//! tokio's timer has a 1 ms granularity and rounds deadlines up: a sender woken by it is
//! on average ~1 ms late, which would show as latency of the gateway. The [`Timer`] keeps
//! its deadlines in a heap shared with a helper OS thread that sleeps until the earliest
//! one (`park_timeout`, ~50 µs timer slack), moves the expired wakers to a ready list and
//! wakes the runtime once; [`Timer::service`] then wakes those tasks on the runtime thread.
//! What lateness remains is reported as "send lag".

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Monotonic nanoseconds since process start, mapped to epoch microseconds once.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_epoch_us: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let base = Instant::now();
        let base_epoch_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        Clock { base, base_epoch_us }
    }

    /// Nanoseconds since this clock was made.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Epoch microseconds of a clock reading.
    #[inline]
    pub fn epoch_us(&self, ns: u64) -> u64 {
        self.base_epoch_us + ns / 1000
    }

    /// Epoch microseconds now.
    #[inline]
    pub fn now_epoch_us(&self) -> u64 {
        self.epoch_us(self.now_ns())
    }

    /// Clock reading of an epoch time (0 if before the clock was made).
    pub fn ns_of_epoch_us(&self, us: u64) -> u64 {
        us.saturating_sub(self.base_epoch_us).saturating_mul(1000)
    }
}

/// State shared with the helper thread.
struct Shared {
    clock: Clock,
    heap: Mutex<BinaryHeap<Reverse<Entry>>>,
    /// Expired, to be woken on the runtime thread.
    ready: Mutex<Vec<Waker>>,
    notify: Notify,
    stop: AtomicBool,
}

/// One pending wake-up.
struct Entry {
    due: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.due == o.due
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.due.cmp(&o.due)
    }
}

/// The precise timer; its helper thread is stopped on drop.
pub struct Timer {
    shared: Arc<Shared>,
    thread: Thread,
}

impl Timer {
    /// Starts the helper thread. [`Timer::service`] must run in a task on the runtime.
    pub fn start(clock: Clock) -> std::io::Result<Timer> {
        let shared = Arc::new(Shared {
            clock,
            heap: Mutex::new(BinaryHeap::new()),
            ready: Mutex::new(Vec::new()),
            notify: Notify::new(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new().name("load-timer".into()).spawn(move || helper(&s))?;
        Ok(Timer { shared, thread: handle.thread().clone() })
    }

    /// The clock deadlines are on.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// Ready once the clock reaches `due`; otherwise registers the task's waker (only when
    /// `*registered != due`, so polling again for the same deadline does not re-register).
    pub fn poll_until(&self, cx: &mut Context<'_>, due: u64, registered: &mut u64) -> Poll<()> {
        if self.shared.clock.now_ns() >= due {
            return Poll::Ready(());
        }
        if *registered != due {
            *registered = due;
            let mut heap = self.shared.heap.lock();
            let earliest = heap.peek().is_none_or(|e| due < e.0.due);
            heap.push(Reverse(Entry { due, waker: cx.waker().clone() }));
            drop(heap);
            if earliest {
                // The helper may be sleeping towards a later deadline.
                self.thread.unpark();
            }
        }
        Poll::Pending
    }

    /// Runs forever on the runtime: wakes the tasks the helper found expired (local
    /// wake-ups are much cheaper than cross-thread ones, and the runtime is woken once).
    pub async fn service(&self) {
        let mut batch = Vec::new();
        loop {
            self.shared.notify.notified().await;
            std::mem::swap(&mut batch, &mut *self.shared.ready.lock());
            for w in batch.drain(..) {
                w.wake();
            }
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// The helper thread: hands expired wakers to the runtime, sleeps until the next deadline.
fn helper(s: &Shared) {
    while !s.stop.load(Ordering::Acquire) {
        let now = s.clock.now_ns();
        let mut fired = false;
        let next = {
            let mut heap = s.heap.lock();
            if heap.peek().is_some_and(|e| e.0.due <= now) {
                let mut ready = s.ready.lock();
                while heap.peek().is_some_and(|e| e.0.due <= now) {
                    if let Some(Reverse(e)) = heap.pop() {
                        ready.push(e.waker);
                    }
                }
                fired = true;
            }
            heap.peek().map(|e| e.0.due)
        };
        if fired {
            s.notify.notify_one();
        }
        // An `unpark` between the check above and here makes the park return at once.
        match next {
            None => std::thread::park(),
            Some(t) => {
                let now = s.clock.now_ns();
                if t > now {
                    std::thread::park_timeout(Duration::from_nanos(t - now));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn clock_maps_epoch() {
        let c = Clock::new();
        let now = c.now_epoch_us();
        let sys = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        assert!(sys.abs_diff(now) < 100_000);
        assert_eq!(c.ns_of_epoch_us(c.epoch_us(5_000_000)), 5_000_000);
        assert_eq!(c.ns_of_epoch_us(0), 0);
    }

    #[test]
    fn timer_wakes_in_order_and_never_early() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let timer = Rc::new(Timer::start(Clock::new()).unwrap());
            let t2 = timer.clone();
            tokio::task::spawn_local(async move { t2.service().await });
            let order = Rc::new(RefCell::new(Vec::new()));
            // One base for every deadline, so their order does not depend on when each task
            // first runs. (How late a wake-up is depends on the machine: the load tool
            // reports it as latency; it is not asserted here.)
            let base = timer.clock().now_ns();
            let mut tasks = Vec::new();
            for (i, delay_us) in [3000u64, 1000, 2000, 1500, 200].into_iter().enumerate() {
                let (timer, order) = (timer.clone(), order.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let due = base + delay_us * 1000;
                    let mut reg = 0;
                    std::future::poll_fn(|cx| timer.poll_until(cx, due, &mut reg)).await;
                    let now = timer.clock().now_ns();
                    assert!(now >= due, "task {i} woken {} ns early", due - now);
                    order.borrow_mut().push(i);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(*order.borrow(), vec![4, 1, 3, 2, 0]);
        });
    }
}
