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
    /// Events the socket filter let through and its Rust fallback left out. (What the
    /// kernel's filter dropped is never seen, so never counted.)
    pub filtered_by_fallback: u64,
    /// Times the socket reported ENOBUFS (once per overrun, however many events it cost;
    /// never in reliable mode).
    pub overruns: u64,
    /// Events the kernel could not queue on our socket because its buffer was full (the
    /// socket's drops counter), in both modes. In reliable mode the DESTROYs among them are
    /// sent again later, so there it is an upper bound of what was lost.
    pub kernel_dropped: u64,
    /// Events read from the socket after `stop_reading` (what it still held), all queued.
    pub read_at_stop: u64,
    /// 1 when reading what the socket held at stop took too long and was cut short (what
    /// was left is lost, uncounted: the log says so).
    pub stop_cut_short: u64,
    /// Messages that could not be decoded, skipped.
    pub decode_errors: u64,
    /// Events handed to the consumer.
    pub delivered: u64,
    /// Of those, by type, indexed by `EventType::index`: the consumer need not read the type
    /// back out of each event.
    pub delivered_by_type: [u64; 3],
    /// The most events ever waiting in the queue at once.
    pub peak_queued: u64,
}

pub enum Pop {
    /// An event, and the kernel_dropped total so far (so the consumer can report growth).
    Event(Event, u64),
    Timeout,
    /// The reader has stopped and the queue is empty; `Some` the first time it failed.
    Ended(Option<Error>),
}

/// What `pop_many` found; the events themselves are appended to the caller's vector.
pub enum PopMany {
    /// At least one event was taken; the kernel_dropped total so far.
    Events(u64),
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
    /// Set at stop: the reader pushes what the socket still holds without waiting for room,
    /// as nobody may be taking events while it does (the socket's buffer bounds it).
    unbounded: AtomicBool,
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
            unbounded: AtomicBool::new(false),
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
        self.push_many(&mut vec![event], stop)
    }

    /// Queues the events of one read, oldest first: one lock and at most one wake-up of the
    /// consumer for all of them while there is room; waits while the queue is full. Returns
    /// false if `stop` was set while waiting; what was not queued is left in `events`.
    pub fn push_many(&self, events: &mut Vec<Event>, stop: &AtomicBool) -> bool {
        while !events.is_empty() {
            let mut state = self.lock();
            while state.events.len() >= self.capacity && !self.unbounded.load(Ordering::Relaxed) {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                state = self
                    .not_full
                    .wait_timeout(state, Duration::from_millis(50))
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
            let room = if self.unbounded.load(Ordering::Relaxed) {
                events.len()
            } else {
                self.capacity - state.events.len()
            };
            let was_empty = state.events.is_empty();
            let taken = room.min(events.len());
            state.events.extend(events.drain(..taken));
            state.stats.received += taken as u64;
            let queued = state.events.len() as u64;
            state.stats.peak_queued = state.stats.peak_queued.max(queued);
            drop(state);
            // A consumer waits only on an empty queue; waking it costs a system call, so only
            // the events that end the emptiness do. (Several consumers still progress: each
            // wait is bounded.)
            if was_empty {
                self.not_empty.notify_one();
            }
        }
        true
    }

    /// Takes the oldest event, waiting up to `timeout` for one.
    pub fn pop(&self, timeout: Duration) -> Pop {
        let mut events = Vec::with_capacity(1);
        match self.pop_many(timeout, 1, &mut events) {
            // Events: at least one was taken.
            PopMany::Events(kernel_dropped) => match events.pop() {
                Some(event) => Pop::Event(event, kernel_dropped),
                None => Pop::Timeout,
            },
            PopMany::Timeout => Pop::Timeout,
            PopMany::Ended(failure) => Pop::Ended(failure),
        }
    }

    /// Moves up to `max_events` of the oldest events to `out`, waiting up to `timeout` for the
    /// first; never waits for more once it has one. One lock and at most one wake-up of the
    /// reader per call, however many events it takes.
    pub fn pop_many(&self, timeout: Duration, max_events: usize, out: &mut Vec<Event>) -> PopMany {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.lock();
        loop {
            if !state.events.is_empty() {
                let was_full = state.events.len() >= self.capacity;
                let n = max_events.max(1).min(state.events.len());
                let stats = &mut state.stats;
                stats.delivered += n as u64;
                let kernel_dropped = stats.kernel_dropped;
                let taken = out.len();
                out.extend(state.events.drain(..n));
                for event in &out[taken..] {
                    state.stats.delivered_by_type[event.event_type.index()] += 1;
                }
                drop(state);
                // The reader waits only on a full queue: wake it only when this made room.
                if was_full {
                    self.not_full.notify_one();
                }
                return PopMany::Events(kernel_dropped);
            }
            if state.ended {
                return PopMany::Ended(state.failure.take());
            }
            let now = Instant::now();
            // No deadline: a timeout too large to add to the clock waits for ever.
            let wait = match deadline {
                Some(deadline) if now >= deadline => return PopMany::Timeout,
                Some(deadline) => deadline - now,
                None => Duration::from_secs(3600),
            };
            state = self
                .not_empty
                .wait_timeout(state, wait)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// From now on `push` never waits for room; a pusher waiting now goes on.
    pub fn lift_bound(&self) {
        self.unbounded.store(true, Ordering::Relaxed);
        let _guard = self.lock(); // a pusher between its check and its wait sees the flag
        self.not_full.notify_all();
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{Pop, PopMany, Queue};
    use crate::event::Event;
    use crate::tests::decode_file;

    fn sample_event(id: u32) -> Event {
        let mut event = decode_file("udp_ipv4_new_0.bin");
        event.id = id;
        event
    }

    #[test]
    fn queue_blocks_when_full_and_stop_releases_the_pusher() {
        let queue = Arc::new(Queue::new(2));
        let stop = Arc::new(AtomicBool::new(false));
        assert!(queue.push(sample_event(1), &stop));
        assert!(queue.push(sample_event(2), &stop));

        let pusher = {
            let (queue, stop) = (Arc::clone(&queue), Arc::clone(&stop));
            std::thread::spawn(move || queue.push(sample_event(3), &stop))
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !pusher.is_finished(),
            "push returned although the queue is full"
        );
        assert_eq!(queue.stats().1, 2);

        let started = Instant::now();
        stop.store(true, Ordering::Relaxed);
        assert!(
            !pusher.join().expect("pusher"),
            "a stopped push reports false"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // The stopped push left nothing behind.
        let (stats, queued) = queue.stats();
        assert_eq!((stats.received, queued), (2, 2));
    }

    #[test]
    fn lifting_the_bound_releases_a_blocked_pusher_and_keeps_its_event() {
        let queue = Arc::new(Queue::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        assert!(queue.push(sample_event(1), &stop));
        let pusher = {
            let (queue, stop) = (Arc::clone(&queue), Arc::clone(&stop));
            std::thread::spawn(move || queue.push(sample_event(2), &stop))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !pusher.is_finished(),
            "push returned although the queue is full"
        );
        queue.lift_bound();
        assert!(pusher.join().expect("pusher"));
        assert!(queue.push(sample_event(3), &stop), "no bound any more");
        assert_eq!(queue.stats().1, 3);
    }

    #[test]
    fn queue_pop_makes_room_for_a_blocked_pusher() {
        let queue = Arc::new(Queue::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        assert!(queue.push(sample_event(1), &stop));
        let pusher = {
            let (queue, stop) = (Arc::clone(&queue), Arc::clone(&stop));
            std::thread::spawn(move || queue.push(sample_event(2), &stop))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!pusher.is_finished());
        match queue.pop(Duration::from_secs(5)) {
            Pop::Event(event, _) => assert_eq!(event.id, 1),
            _ => panic!("expected the first event"),
        }
        assert!(pusher.join().expect("pusher"));
        match queue.pop(Duration::from_secs(5)) {
            Pop::Event(event, _) => assert_eq!(event.id, 2),
            _ => panic!("expected the second event"),
        }
    }

    #[test]
    fn push_many_fills_the_room_then_waits_for_more_and_keeps_the_order() {
        let queue = Arc::new(Queue::new(3));
        let stop = Arc::new(AtomicBool::new(false));
        let pusher = {
            let (queue, stop) = (Arc::clone(&queue), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut events: Vec<Event> = (1..=5).map(sample_event).collect();
                let pushed = queue.push_many(&mut events, &stop);
                (pushed, events.len())
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!pusher.is_finished(), "5 events do not fit in 3 places");
        assert_eq!(queue.stats().1, 3, "the room was filled while waiting");
        let mut taken = Vec::new();
        while taken.len() < 5 {
            match queue.pop_many(Duration::from_secs(5), 2, &mut taken) {
                PopMany::Events(_) => {}
                _ => panic!("expected events"),
            }
        }
        assert_eq!(pusher.join().expect("pusher"), (true, 0));
        let ids: Vec<u32> = taken.iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        let (stats, _) = queue.stats();
        assert_eq!((stats.received, stats.peak_queued), (5, 3));
    }

    #[test]
    fn a_stopped_push_many_leaves_what_it_could_not_queue() {
        let queue = Queue::new(2);
        let stop = AtomicBool::new(true);
        let mut events: Vec<Event> = (1..=3).map(sample_event).collect();
        assert!(!queue.push_many(&mut events, &stop));
        assert_eq!(queue.stats().1, 2);
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn queue_pops_in_order_then_ends() {
        let queue = Queue::new(8);
        let stop = AtomicBool::new(false);
        for id in 1..=5 {
            assert!(queue.push(sample_event(id), &stop));
        }
        queue.count(|s| s.kernel_dropped += 3);
        queue.count(|s| s.decode_errors += 1);

        let started = Instant::now();
        assert!(matches!(
            queue.pop(Duration::from_millis(0)),
            Pop::Event(_, 3)
        ));
        queue.finish(None);
        // What was queued before the end is still delivered, in order.
        for id in 2..=5 {
            match queue.pop(Duration::from_secs(1)) {
                Pop::Event(event, kernel_dropped) => {
                    assert_eq!(event.id, id);
                    assert_eq!(kernel_dropped, 3);
                }
                _ => panic!("expected event {id}"),
            }
        }
        assert!(matches!(
            queue.pop(Duration::from_secs(1)),
            Pop::Ended(None)
        ));
        assert!(matches!(
            queue.pop(Duration::from_secs(1)),
            Pop::Ended(None)
        ));
        assert!(started.elapsed() < Duration::from_secs(1));

        let (stats, queued) = queue.stats();
        assert_eq!(queued, 0);
        assert_eq!(stats.received, 5);
        assert_eq!(stats.delivered, 5);
        assert_eq!(stats.peak_queued, 5);
        assert_eq!(stats.kernel_dropped, 3);
        assert_eq!(stats.decode_errors, 1);
    }

    #[test]
    fn queue_pop_times_out_when_empty_and_reports_failure_once() {
        let queue = Arc::new(Queue::new(4));
        let started = Instant::now();
        assert!(matches!(queue.pop(Duration::from_millis(50)), Pop::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(50));

        // A waiting consumer is woken by finish().
        let consumer = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || match queue.pop(Duration::from_secs(10)) {
                Pop::Ended(Some(error)) => error.to_string(),
                _ => String::from("not ended"),
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        queue.finish(Some(crate::Error::InvalidArgument("gone".into())));
        assert_eq!(consumer.join().expect("consumer"), "gone");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            queue.pop(Duration::from_millis(1)),
            Pop::Ended(None)
        ));
    }

    #[test]
    fn queue_pop_many_takes_a_batch_in_order_and_counts_types() {
        let queue = Queue::new(4);
        let stop = AtomicBool::new(false);
        for id in 1..=4 {
            assert!(queue.push(sample_event(id), &stop));
        }
        let mut events = Vec::new();
        assert!(matches!(
            queue.pop_many(Duration::from_secs(1), 3, &mut events),
            PopMany::Events(0)
        ));
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(matches!(
            queue.pop_many(Duration::from_secs(1), 10, &mut events),
            PopMany::Events(0)
        ));
        assert_eq!(events.len(), 4);
        assert!(matches!(
            queue.pop_many(Duration::from_millis(10), 10, &mut events),
            PopMany::Timeout
        ));
        let (stats, queued) = queue.stats();
        assert_eq!((stats.delivered, queued), (4, 0));
        assert_eq!(stats.delivered_by_type, [4, 0, 0]);
        queue.finish(None);
        assert!(matches!(
            queue.pop_many(Duration::from_secs(1), 10, &mut events),
            PopMany::Ended(None)
        ));
    }
}
