//! The one background thread that gives memory of expired keys back.
//!
//! Reads already hide expired keys, so the sweeper is not needed for correctness; it exists
//! so that keys nobody reads again stop costing memory. It sleeps until the earliest deadline
//! in the store (at most [`MAX_SLEEP`]), and a write that adds an earlier deadline wakes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::{Engine, Millis};

/// Longest sleep between sweeps, so a wall-clock jump is noticed within this time.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Lets writers wake the sweeper when they add a deadline earlier than its planned wake-up.
#[derive(Default)]
pub(crate) struct SweepSignal {
    /// When the sleeping sweeper will wake by itself; 0 when no sweeper runs, `u64::MAX`
    /// while it is sweeping (so any deadline added meanwhile triggers another pass).
    planned_wake: AtomicU64,
    state: Mutex<SweepState>,
    condvar: Condvar,
}

#[derive(Default)]
struct SweepState {
    kicked: bool,
    shutdown: bool,
}

impl SweepSignal {
    /// Called after a deadline was stored. Costs one atomic load unless it must wake the
    /// sweeper.
    pub fn deadline_added(&self, deadline: Millis) {
        if deadline < self.planned_wake.load(Ordering::Acquire) {
            let mut state = self.state.lock();
            state.kicked = true;
            self.condvar.notify_one();
        }
    }
}

/// Handle of the running sweeper thread; dropping it stops the thread and waits for it.
pub struct Sweeper {
    engine: Engine,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    pub(crate) fn start(engine: Engine) -> Sweeper {
        let worker = engine.clone();
        let thread = std::thread::Builder::new()
            .name("rrkv-sweeper".into())
            .spawn(move || run(worker))
            .expect("spawn the sweeper thread");
        Sweeper {
            engine,
            thread: Some(thread),
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        let signal = &self.engine.inner.sweep;
        signal.state.lock().shutdown = true;
        signal.condvar.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(engine: Engine) {
    let signal = &engine.inner.sweep;
    loop {
        signal.planned_wake.store(u64::MAX, Ordering::Release);
        {
            let mut state = signal.state.lock();
            if state.shutdown {
                break;
            }
            state.kicked = false;
        }
        let now = engine.now_ms();
        let report = engine.purge_expired();
        let max_wake = now.saturating_add(MAX_SLEEP.as_millis() as u64);
        let wake = report.next_deadline.map_or(max_wake, |d| d.min(max_wake));

        let mut state = signal.state.lock();
        if state.shutdown {
            break;
        }
        if state.kicked {
            continue;
        }
        signal.planned_wake.store(wake, Ordering::Release);
        let sleep = wake.saturating_sub(engine.now_ms());
        if sleep > 0 {
            signal
                .condvar
                .wait_for(&mut state, Duration::from_millis(sleep));
        }
    }
    signal.planned_wake.store(0, Ordering::Release);
}
