//! The reader thread: owns the socket, decodes, filters and feeds the queue.
//!
//! It never waits on the consumer beyond the queue's bound, and the consumer never
//! touches the socket.

use std::fs::File;
use std::os::fd::AsFd;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::decode::{self, Skip};
use crate::error::{Error, Result};
use crate::event::{Event, EventType};
use crate::filter::Filter;
use crate::kernel;
use crate::netns;
use crate::queue::{Pop, PopMany, Queue, Stats};
use crate::schema::{Field, Fields};
use crate::socket::{EventSocket, Received};
use crate::wake::Wake;

/// Big enough for any single ctnetlink event datagram (they are under 2 KiB).
const DATAGRAM_BYTES: usize = 16 * 1024;
/// Datagrams taken per system call in a burst.
const BATCH_DATAGRAMS: usize = 32;
/// During a burst the socket's drops counter is read this often (also on every ENOBUFS,
/// whenever the socket is empty, and at the end): so `stats()` is at most about this old while reading.
const DROPS_READ_INTERVAL: Duration = Duration::from_millis(100);
/// After a read that emptied the socket the reader pauses before the next one, so that a
/// sparse stream is read in batches: one wake-up of the reader and of the consumer per batch
/// rather than per event (what a filter that lets 1 in 10 through is left paying). The pause
/// lets at most half of the socket's buffer fill at the fastest event rate seen here
/// (about 370k events/s in a flush on 2 cores, each taking under 1 KiB of socket memory),
/// and never more than LINGER_MAX: about 15 ms with the default buffer, none with a tiny
/// one. Each read cycle costs the reader and the consumer a wake-up (tens of microseconds on
/// a small VM), so the pause, not the events, sets the CPU of a sparse stream; half a buffer
/// still leaves the other half for the reading that follows.
const LINGER_MAX: Duration = Duration::from_millis(20);
const FASTEST_SOCKET_BYTES_PER_S: f64 = 500_000.0 * 1024.0;
/// Shorter pauses than this are not worth a sleep.
const LINGER_MIN: Duration = Duration::from_micros(200);
/// At stop, reading what the socket still holds ends after this long at the most (it is
/// bounded anyway once we have left the groups; this is for a kernel that refused that).
const STOP_READ_LIMIT: Duration = Duration::from_secs(5);

/// The defaults, defined here once; the Python API and the command read them from the
/// native module.
pub const DEFAULT_TYPES: [EventType; 2] = [EventType::New, EventType::Destroy];
/// The reference's `conntrack --buffer-size`: room for a burst of about 30k events.
pub const DEFAULT_BUFFER_BYTES: usize = 15_000_000;
pub const DEFAULT_QUEUE_EVENTS: usize = 65_536;

#[derive(Clone, Debug)]
pub struct Options {
    pub types: Vec<EventType>,
    /// A network namespace to read from: a path such as /run/netns/NAME.
    pub netns: Option<PathBuf>,
    /// Keep only source-NATed flows.
    pub nat_only: bool,
    pub buffer_bytes: usize,
    pub reliable: bool,
    /// Events the queue holds before the reader stops reading.
    pub queue_events: usize,
    /// The opt-in fields the consumer writes: start-up warns when the kernel leaves them empty.
    pub fields: Fields,
    /// Accept/ignore rules: attached to the socket, and applied again to what passes it.
    pub filter: Filter,
}

impl Options {
    /// The ctnetlink multicast groups of `types`: joined at start, left at stop.
    fn groups(&self) -> Vec<u32> {
        self.types.iter().map(|t| t.multicast_group()).collect()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            types: DEFAULT_TYPES.to_vec(),
            netns: None,
            nat_only: false,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            reliable: false,
            queue_events: DEFAULT_QUEUE_EVENTS,
            fields: Fields::NONE,
            filter: Filter::default(),
        }
    }
}

/// What the reader found while starting.
#[derive(Clone, Debug, Default)]
pub struct Started {
    /// One line each: kernel settings that make events incomplete, a smaller buffer.
    pub warnings: Vec<String>,
    pub buffer_bytes_granted: usize,
}

pub struct Stream {
    queue: Arc<Queue>,
    stop: Arc<AtomicBool>,
    /// Set by `stop_reading`: read what the socket holds, then end.
    draining: Arc<AtomicBool>,
    /// Signalled with `stop` and `draining`: the reader waits on it beside its socket.
    wake: Arc<Wake>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub started: Started,
}

impl Stream {
    /// Starts the reader thread; returns once it has subscribed, so traffic made after
    /// this returns produces events.
    pub fn start(options: Options) -> Result<Stream> {
        if options.types.is_empty() {
            return Err(Error::InvalidArgument("no event types to listen to".into()));
        }
        let netns = options.netns.as_deref().map(netns::open).transpose()?;
        let queue = Arc::new(Queue::new(options.queue_events));
        let stop = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Wake::new()?);
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let queue = Arc::clone(&queue);
            let stop = Arc::clone(&stop);
            let draining = Arc::clone(&draining);
            let wake = Arc::clone(&wake);
            std::thread::Builder::new()
                .name("conntrack-reader".into())
                .spawn(move || {
                    // Whatever happens here, the consumer must learn that the stream ended,
                    // or it would wait forever.
                    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        match subscribe(&options, netns) {
                            Ok((socket, started)) => {
                                let started_buffer_bytes = started.buffer_bytes_granted;
                                let _ = ready_tx.send(Ok(started));
                                let flags = Flags {
                                    stop: &stop,
                                    draining: &draining,
                                    wake: &wake,
                                };
                                let linger = linger(started_buffer_bytes);
                                read_loop(&socket, &options, &queue, flags, linger).err()
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                None
                            }
                        }
                    }));
                    queue.finish(run.unwrap_or_else(|_| {
                        Some(Error::os(
                            "the reader thread stopped",
                            std::io::Error::other("it panicked"),
                        ))
                    }));
                })
                .map_err(|e| Error::os("cannot start the reader thread", e))?
        };
        let started = ready_rx.recv().unwrap_or_else(|_| {
            Err(Error::os(
                "the reader thread ended before subscribing",
                std::io::Error::other("it panicked"),
            ))
        });
        let mut stream = Stream {
            queue,
            stop,
            draining,
            wake,
            thread: Mutex::new(Some(thread)),
            started: Started::default(),
        };
        // On failure, dropping `stream` joins the thread, which has already ended.
        stream.started = started?;
        Ok(stream)
    }

    pub fn pop(&self, timeout: Duration) -> Pop {
        self.queue.pop(timeout)
    }

    pub fn pop_many(
        &self,
        timeout: Duration,
        max_events: usize,
        out: &mut Vec<crate::event::Event>,
    ) -> PopMany {
        self.queue.pop_many(timeout, max_events, out)
    }

    pub fn stats(&self) -> (Stats, usize) {
        self.queue.stats()
    }

    /// Stops reading new events: the reader leaves the event groups, reads what the socket
    /// still holds into the queue (never waiting for room: nobody may be taking events), then
    /// ends. Returns once it has; the queue then holds the rest of the stream.
    pub fn stop_reading(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.wake.signal();
        self.queue.lift_bound();
        self.join();
    }

    /// Stops the reader thread and waits for it; what the socket still holds is not read.
    pub fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.signal();
        self.join();
    }

    fn join(&self) {
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs on the reader thread: enter the namespace, check the kernel, open the socket.
fn subscribe(options: &Options, netns: Option<File>) -> Result<(EventSocket, Started)> {
    if let (Some(netns), Some(path)) = (netns, &options.netns) {
        netns::enter(&netns, path)?; // this thread only: the caller's stays where it is
    }
    kernel::check_conntrack_present()?;
    EventSocket::probe_ctnetlink()?;
    let socket = EventSocket::open(&options.groups())?;
    let mut started = Started::default();
    let granted = socket
        .set_receive_buffer(options.buffer_bytes)
        .map_err(|e| Error::os("cannot set the receive buffer size", e))?;
    started.buffer_bytes_granted = granted;
    if granted < options.buffer_bytes {
        let rmem_max = kernel::rmem_max_bytes()
            .map(|v| format!("net.core.rmem_max={v}"))
            .unwrap_or_else(|| "net.core.rmem_max unknown".into());
        started.warnings.push(format!(
            "receive buffer: asked for {} bytes, got {granted} ({rmem_max}; SO_RCVBUFFORCE needs \
             CAP_NET_ADMIN): bursts may overflow it",
            options.buffer_bytes
        ));
    }
    if options.reliable {
        socket
            .set_reliable()
            .map_err(|e| Error::os("cannot enable reliable event delivery", e))?;
    }
    if let Some(program) = options.filter.compile() {
        socket.attach_filter(&program.instructions).map_err(|e| {
            Error::KernelUnsupported(format!(
                "the kernel refused the event filter ({} BPF instructions; net.core.optmem_max \
                 bounds its size): {e}",
                program.instructions.len()
            ))
        })?;
        started.warnings.extend(program.left_to_rust);
    }
    started.warnings.extend(kernel::settings_warnings());
    if options.fields.contains(Field::Timestamps) {
        started.warnings.extend(kernel::timestamps_warning());
    }
    Ok((socket, started))
}

/// What the consumer asks of the reader thread.
#[derive(Clone, Copy)]
struct Flags<'a> {
    /// End now.
    stop: &'a AtomicBool,
    /// Read what the socket holds, then end.
    draining: &'a AtomicBool,
    /// Readable once either is set.
    wake: &'a Wake,
}

/// The pause after a read that emptied a socket of `buffer_bytes` (see LINGER_MAX).
fn linger(buffer_bytes: usize) -> Option<Duration> {
    let half_filled_s = buffer_bytes as f64 / 2.0 / FASTEST_SOCKET_BYTES_PER_S;
    // Whole nanoseconds, rounded down: "at most half".
    let pause = Duration::from_nanos((half_filled_s * 1e9) as u64).min(LINGER_MAX);
    (pause >= LINGER_MIN).then_some(pause)
}

fn read_loop(
    socket: &EventSocket,
    options: &Options,
    queue: &Queue,
    flags: Flags,
    linger: Option<Duration>,
) -> Result<()> {
    let mut batch = Batch::new();
    let mut drops = DropsCounter::new(socket);
    let reading = || !flags.stop.load(Ordering::Relaxed) && !flags.draining.load(Ordering::Relaxed);
    while reading() {
        // Never blocks: an empty socket is waited on below, beside the wake-up.
        let count = match batch.receive(socket, false) {
            Ok(Received::Datagrams(count)) => count,
            Ok(Received::Timeout) => {
                drops.read(socket, queue);
                socket
                    .wait_readable(flags.wake.as_fd())
                    .map_err(|e| Error::os("waiting for conntrack events failed", e))?;
                continue;
            }
            Ok(Received::Overrun) => {
                queue.count(|s| s.overruns += 1);
                drops.read(socket, queue);
                continue;
            }
            Err(e) => {
                drops.read(socket, queue);
                return Err(Error::os("reading conntrack events failed", e));
            }
        };
        if drops.due() {
            drops.read(socket, queue);
        }
        batch.decode(count, options, queue);
        if !queue.push_many(&mut batch.events, flags.stop) {
            break;
        }
        if let Some(pause) = linger.filter(|_| count < BATCH_DATAGRAMS) {
            std::thread::sleep(pause);
        }
    }
    if flags.draining.load(Ordering::Relaxed) && !flags.stop.load(Ordering::Relaxed) {
        read_rest(socket, options, queue, flags.stop, &mut batch);
    }
    drops.read(socket, queue);
    Ok(())
}

/// At stop: leave the groups, so nothing more is queued for us, then read what the socket
/// holds until it is empty, without waiting (bounded by STOP_READ_LIMIT all the same).
fn read_rest(
    socket: &EventSocket,
    options: &Options,
    queue: &Queue,
    stop: &AtomicBool,
    batch: &mut Batch,
) {
    let _ = socket.leave(&options.groups()); // if refused, the time limit bounds the reading
    let received_before = queue.stats().0.received;
    let deadline = Instant::now() + STOP_READ_LIMIT;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= deadline {
            queue.count(|s| s.stop_cut_short = 1);
            break;
        }
        match batch.receive(socket, false) {
            Ok(Received::Datagrams(count)) => {
                batch.decode(count, options, queue);
                if !queue.push_many(&mut batch.events, stop) {
                    break;
                }
            }
            Ok(Received::Overrun) => queue.count(|s| s.overruns += 1),
            Ok(Received::Timeout) | Err(_) => break, // empty (EAGAIN), or nothing more to get
        }
    }
    let read = queue.stats().0.received - received_before;
    queue.count(|s| s.read_at_stop += read);
}

/// The socket's drops counter (a u32 that wraps) summed into `kernel_dropped`.
struct DropsCounter {
    last: Option<u32>,
    read_at: Instant,
}

impl DropsCounter {
    fn new(socket: &EventSocket) -> Self {
        DropsCounter {
            last: socket.drops(),
            read_at: Instant::now(),
        }
    }

    fn due(&self) -> bool {
        self.read_at.elapsed() >= DROPS_READ_INTERVAL
    }

    fn read(&mut self, socket: &EventSocket, queue: &Queue) {
        self.read_at = Instant::now();
        let (Some(last), Some(now)) = (self.last, socket.drops()) else {
            return;
        };
        self.last = Some(now);
        let dropped = u64::from(now.wrapping_sub(last));
        if dropped > 0 {
            queue.count(|s| s.kernel_dropped += dropped);
        }
    }
}

/// One `recv_batch`'s room: the datagrams, their lengths, and the events kept from them.
struct Batch {
    slots: Vec<u8>,
    lengths: [Option<usize>; BATCH_DATAGRAMS],
    events: Vec<Event>,
}

impl Batch {
    fn new() -> Self {
        Batch {
            slots: vec![0u8; BATCH_DATAGRAMS * DATAGRAM_BYTES],
            lengths: [None; BATCH_DATAGRAMS],
            events: Vec::with_capacity(BATCH_DATAGRAMS),
        }
    }

    fn receive(&mut self, socket: &EventSocket, wait: bool) -> std::io::Result<Received> {
        socket.recv_batch(&mut self.slots, DATAGRAM_BYTES, &mut self.lengths, wait)
    }

    /// Decodes and filters the first `count` datagrams, appending what is kept to `events`.
    fn decode(&mut self, count: usize, options: &Options, queue: &Queue) {
        let timestamp_ms = now_ms();
        for (slot, length) in self
            .slots
            .chunks(DATAGRAM_BYTES)
            .zip(&self.lengths[..count])
        {
            let Some(datagram) = length.and_then(|length| slot.get(..length)) else {
                queue.count(|s| s.decode_errors += 1); // larger than a slot: cut short
                continue;
            };
            handle_datagram(datagram, timestamp_ms, options, queue, &mut self.events);
        }
    }
}

/// Decodes and filters one datagram's events, appending what is kept to `events`.
fn handle_datagram(
    datagram: &[u8],
    timestamp_ms: u64,
    options: &Options,
    queue: &Queue,
    events: &mut Vec<Event>,
) {
    for message in decode::split_messages(datagram) {
        // A panic in the decoder (a bug, on input the fuzzer never tried) costs one
        // message, not the stream.
        let decoded =
            std::panic::catch_unwind(|| message.and_then(|m| decode::decode(m, timestamp_ms)));
        let event = match decoded {
            Ok(Ok(event)) => event,
            Ok(Err(Skip::NotAnEvent)) => continue,
            Ok(Err(Skip::Malformed(_))) | Err(_) => {
                queue.count(|s| s.decode_errors += 1);
                continue;
            }
        };
        let wanted =
            options.types.contains(&event.event_type) && (!options.nat_only || event.is_src_nat());
        if !wanted {
            queue.count(|s| s.filtered += 1);
        } else if !options.filter.keeps(&event) {
            queue.count(|s| s.filtered_by_fallback += 1);
        } else {
            events.push(event);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{linger, DEFAULT_BUFFER_BYTES, LINGER_MAX};

    #[test]
    fn the_pause_after_an_emptied_socket_fills_at_most_half_of_its_buffer() {
        let default = linger(DEFAULT_BUFFER_BYTES).expect("the default buffer allows a pause");
        assert!(default <= LINGER_MAX);
        // 500k events/s of 1 KiB each for the pause: at most half of the buffer.
        let filled = 500_000.0 * 1024.0 * default.as_secs_f64();
        assert!(filled <= DEFAULT_BUFFER_BYTES as f64 / 2.0, "{filled}");
        assert_eq!(linger(4096), None, "a tiny buffer is read without pausing");
        assert_eq!(linger(1 << 30), Some(LINGER_MAX));
    }
}
