//! The bounded hand-over between the reader thread and the consumer, with the counters.
//!
//! When it is full the reader stops reading, so a burst waits in the kernel's socket
//! buffer (and, in reliable mode, in the kernel itself) rather than in our memory, and
//! any loss shows up as ENOBUFS in one place.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::event::Event;

/// Counters since the stream started. Plain integers under the queue's lock: no 64-bit
/// atomics, which mipsel lacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events decoded and put in the queue.
    pub received: u64,
    /// Events decoded but left out by the `nat_only` or type filter.
    pub filtered: u64,
    /// Times the socket reported ENOBUFS: the kernel dropped events.
    pub overruns: u64,
    /// Messages that could not be decoded, skipped.
    pub decode_errors: u64,
    /// Events handed to the consumer.
    pub delivered: u64,
    /// The most events ever waiting in the queue at once.
    pub peak_queued: u64,
}

pub enum Pop {
    /// An event, and the overrun total so far (so the consumer can report growth).
    Event(Event, u64),
    Timeout,
    /// The reader has stopped and the queue is empty; `Some` the first time it failed.
    Ended(Option<Error>),
}

struct State {
    events: VecDeque<Event>,
    stats: Stats,
    ended: bool,
    failure: Option<Error>,
}

pub struct Queue {
    capacity: usize,
    state: Mutex<State>,
    not_empty: Condvar,
    not_full: Condvar,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Queue {
            capacity: capacity.max(1),
            state: Mutex::new(State {
                events: VecDeque::new(),
                stats: Stats::default(),
                ended: false,
                failure: None,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one event, waiting while the queue is full. Returns false if `stop` was set
    /// while waiting.
    pub fn push(&self, event: Event, stop: &AtomicBool) -> bool {
        let mut state = self.lock();
        while state.events.len() >= self.capacity {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            state = self
                .not_full
                .wait_timeout(state, Duration::from_millis(50))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        state.events.push_back(event);
        state.stats.received += 1;
        let queued = state.events.len() as u64;
        state.stats.peak_queued = state.stats.peak_queued.max(queued);
        drop(state);
        // A consumer waits only on an empty queue; waking it costs a system call, so only
        // the event that ends the emptiness does. (Several consumers still progress: each
        // wait is bounded.)
        if queued == 1 {
            self.not_empty.notify_one();
        }
        true
    }

    /// Takes the oldest event, waiting up to `timeout` for one.
    pub fn pop(&self, timeout: Duration) -> Pop {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(event) = state.events.pop_front() {
                state.stats.delivered += 1;
                let overruns = state.stats.overruns;
                // The reader waits only on a full queue: wake it only when this made room.
                let was_full = state.events.len() + 1 == self.capacity;
                drop(state);
                if was_full {
                    self.not_full.notify_one();
                }
                return Pop::Event(event, overruns);
            }
            if state.ended {
                return Pop::Ended(state.failure.take());
            }
            let now = Instant::now();
            if now >= deadline {
                return Pop::Timeout;
            }
            state = self
                .not_empty
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    pub fn count(&self, update: impl FnOnce(&mut Stats)) {
        update(&mut self.lock().stats);
    }

    /// The counters and how many events wait now.
    pub fn stats(&self) -> (Stats, usize) {
        let state = self.lock();
        (state.stats, state.events.len())
    }

    /// Marks the end of the stream: the consumer drains what is queued, then sees the end.
    pub fn finish(&self, failure: Option<Error>) {
        let mut state = self.lock();
        state.ended = true;
        state.failure = failure;
        drop(state);
        self.not_empty.notify_all();
    }
}
