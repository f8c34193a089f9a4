//! The only file that knows Python: `_native.EventStream` and the exception mapping.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyPermissionError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::decode;
use crate::error::Error;
use crate::event::{Event, EventType};
use crate::filter::{Filter, FilterText};
use crate::json;
use crate::kernel;
use crate::netns;
use crate::queue::{Pop, PopMany};
use crate::reader::{Options, Stream, DEFAULT_BUFFER_BYTES, DEFAULT_QUEUE_EVENTS, DEFAULT_TYPES};
use crate::schema::{self, Field, Fields, Key, Scalar};

create_exception!(
    conntrack_collector._native,
    ConntrackError,
    PyOSError,
    "Base class of the errors conntrack_collector raises itself: an OSError, with the errno when \
     a system call failed."
);

/// The longest the GIL is released in one go, so Ctrl-C is seen within this time.
const WAIT_SLICE: Duration = Duration::from_millis(50);

impl From<Error> for PyErr {
    fn from(error: Error) -> PyErr {
        let message = error.to_string();
        match error {
            Error::Permission(_) => PyPermissionError::new_err(message),
            Error::NamespaceNotFound(_) => PyFileNotFoundError::new_err(message),
            Error::InvalidArgument(_) => PyValueError::new_err(message),
            Error::KernelUnsupported(_) => ConntrackError::new_err(message),
            Error::Os { source, .. } => match source.raw_os_error() {
                Some(errno) => ConntrackError::new_err((errno, message)),
                None => ConntrackError::new_err(message),
            },
        }
    }
}

#[pyclass(frozen, module = "conntrack_collector._native", name = "EventStream")]
struct EventStream {
    stream: Stream,
    as_json: bool,
    /// The opt-in fields each event carries after ASSURED.
    fields: Fields,
    /// Called with the kernel_dropped total whenever a pop sees it grown (what to say, and
    /// how often, is the Python wrapper's business).
    on_kernel_drops: Option<PyObject>,
    /// The kernel_dropped total last passed to `on_kernel_drops`.
    drops_reported: Mutex<u64>,
}

#[pymethods]
impl EventStream {
    #[new]
    #[pyo3(signature = (
        types = default_type_names(),
        *,
        netns = None,
        nat_only = false,
        buffer_bytes = DEFAULT_BUFFER_BYTES,
        reliable = false,
        as_json = false,
        queue_events = DEFAULT_QUEUE_EVENTS,
        fields = Vec::new(),
        filter = HashMap::new(),
        on_kernel_drops = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        types: Vec<String>,
        netns: Option<PathBuf>,
        nat_only: bool,
        buffer_bytes: usize,
        reliable: bool,
        as_json: bool,
        queue_events: usize,
        fields: Vec<String>,
        filter: HashMap<String, Vec<String>>,
        on_kernel_drops: Option<PyObject>,
    ) -> PyResult<Self> {
        let fields = parse_fields(&fields)?;
        let filter = parse_filter(filter)?;
        let types = types
            .iter()
            .map(|name| {
                EventType::from_name(name).ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "unknown event type {name:?}: expected NEW, UPDATE or DESTROY"
                    ))
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let options = Options {
            types,
            netns: netns.map(|path| netns::path(&path.to_string_lossy())),
            nat_only,
            buffer_bytes,
            reliable,
            queue_events,
            fields,
            filter,
        };
        let stream = py.allow_threads(|| Stream::start(options))?;
        Ok(EventStream {
            stream,
            as_json,
            fields,
            on_kernel_drops,
            drops_reported: Mutex::new(0),
        })
    }

    /// One line per kernel setting that makes events incomplete, found at start.
    #[getter]
    fn startup_warnings(&self) -> Vec<String> {
        self.stream.started.warnings.clone()
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyObject>> {
        loop {
            // Signals are checked before waiting, never between taking an event and
            // returning it, so Ctrl-C cannot throw an event away.
            py.check_signals()?;
            match py.allow_threads(|| self.stream.pop(WAIT_SLICE)) {
                Pop::Event(event, dropped) => return self.deliver(py, &event, dropped).map(Some),
                Pop::Timeout => continue,
                Pop::Ended(Some(error)) => return Err(error.into()),
                Pop::Ended(None) => return Ok(None),
            }
        }
    }

    /// One event, or None when none arrives within `timeout_s` seconds.
    fn poll(&self, py: Python<'_>, timeout_s: f64) -> PyResult<Option<PyObject>> {
        let deadline = poll_deadline(timeout_s)?;
        loop {
            py.check_signals()?;
            match py.allow_threads(|| self.stream.pop(slice_until(deadline))) {
                Pop::Event(event, dropped) => return self.deliver(py, &event, dropped).map(Some),
                Pop::Timeout if Instant::now() < deadline => continue,
                Pop::Timeout | Pop::Ended(None) => return Ok(None),
                Pop::Ended(Some(error)) => return Err(error.into()),
            }
        }
    }

    /// Up to `max_events` events, oldest first, as soon as there is one; an empty list when
    /// none arrives within `timeout_s` seconds, or once the stream has ended. The GIL is
    /// released while waiting and while the events are encoded; it is taken once per batch.
    fn poll_many<'py>(
        &self,
        py: Python<'py>,
        timeout_s: f64,
        max_events: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        if max_events == 0 {
            return Err(PyValueError::new_err("max_events must be at least 1"));
        }
        let deadline = poll_deadline(timeout_s)?;
        let mut events = Vec::new();
        loop {
            py.check_signals()?;
            let popped = py.allow_threads(|| {
                let popped = self
                    .stream
                    .pop_many(slice_until(deadline), max_events, &mut events);
                // JSON is written here, without the GIL: the consumer thread only wraps it.
                let json = matches!(popped, PopMany::Events(_) if self.as_json)
                    .then(|| json_batch(&events, self.fields));
                (popped, json)
            });
            match popped {
                (PopMany::Events(kernel_dropped), json) => {
                    self.report_kernel_drops(py, kernel_dropped)?;
                    return match json {
                        Some((bytes, ends)) => {
                            let mut start = 0;
                            let items = ends.iter().map(|&end| {
                                let item = PyBytes::new(py, &bytes[start..end]);
                                start = end;
                                item
                            });
                            PyList::new(py, items)
                        }
                        None => {
                            let list = PyList::empty(py);
                            for event in &events {
                                list.append(event_dict(py, event, self.fields)?)?;
                            }
                            Ok(list)
                        }
                    };
                }
                (PopMany::Timeout, _) if Instant::now() < deadline => continue,
                (PopMany::Timeout | PopMany::Ended(None), _) => return Ok(PyList::empty(py)),
                (PopMany::Ended(Some(error)), _) => return Err(error.into()),
            }
        }
    }

    /// Counters since the start, and the queue's depth now.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (stats, queued) = self.stream.stats();
        let dict = PyDict::new(py);
        dict.set_item("received", stats.received)?;
        dict.set_item("delivered", stats.delivered)?;
        for event_type in EventType::ALL {
            let key = format!("delivered_{}", event_type.name().to_ascii_lowercase());
            dict.set_item(key, stats.delivered_by_type[event_type.index()])?;
        }
        dict.set_item("filtered", stats.filtered)?;
        dict.set_item("filtered_by_fallback", stats.filtered_by_fallback)?;
        dict.set_item("overruns", stats.overruns)?;
        dict.set_item("kernel_dropped", stats.kernel_dropped)?;
        dict.set_item("read_at_stop", stats.read_at_stop)?;
        dict.set_item("stop_cut_short", stats.stop_cut_short)?;
        dict.set_item("decode_errors", stats.decode_errors)?;
        dict.set_item("queued", queued)?;
        dict.set_item("peak_queued", stats.peak_queued)?;
        dict.set_item(
            "socket_buffer_bytes",
            self.stream.started.buffer_bytes_granted,
        )?;
        Ok(dict)
    }

    /// Stops reading new events: what the socket still holds is read into the stream (the
    /// reader leaves the event groups first, so that is finite), then the stream ends; poll
    /// and iteration give the rest without waiting. Returns once the reader has ended.
    fn stop_reading(&self, py: Python<'_>) {
        py.allow_threads(|| self.stream.stop_reading());
    }

    /// Stops the reader thread and waits for it; events still queued are discarded.
    fn close(&self, py: Python<'_>) {
        py.allow_threads(|| self.stream.close());
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }
}

impl EventStream {
    fn deliver(&self, py: Python<'_>, event: &Event, kernel_dropped: u64) -> PyResult<PyObject> {
        self.report_kernel_drops(py, kernel_dropped)?;
        to_python(py, event, self.as_json, self.fields)
    }

    /// Calls `on_kernel_drops(total)` when the total has grown since the last call: a few
    /// times a second at most (the reader reads the counter every 0.1 s), not per event.
    fn report_kernel_drops(&self, py: Python<'_>, kernel_dropped: u64) -> PyResult<()> {
        let Some(callback) = &self.on_kernel_drops else {
            return Ok(());
        };
        if kernel_dropped == 0 {
            return Ok(()); // the common case: no lock
        }
        let mut reported = self
            .drops_reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if kernel_dropped <= *reported {
            return Ok(());
        }
        *reported = kernel_dropped;
        drop(reported);
        callback.call1(py, (kernel_dropped,))?;
        Ok(())
    }
}

/// When a `poll(timeout_s)` gives up. ValueError, as `queue.Queue.get`'s, for a negative
/// timeout, NaN (which `max(0.0)` would quietly make 0), infinity (waiting for ever is what
/// iterating does) and one so large that the deadline overflows the clock (a panic before).
fn poll_deadline(timeout_s: f64) -> PyResult<Instant> {
    let invalid = || {
        PyValueError::new_err(format!(
            "timeout_s must be a finite, non-negative number of seconds, got {timeout_s}"
        ))
    };
    if timeout_s.is_nan() || timeout_s < 0.0 {
        return Err(invalid());
    }
    let timeout = Duration::try_from_secs_f64(timeout_s).map_err(|_| invalid())?;
    Instant::now().checked_add(timeout).ok_or_else(invalid)
}

/// The next wait: up to the deadline, at most one slice (so signals are seen).
fn slice_until(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .min(WAIT_SLICE)
}

/// The events' JSON, one after the other in one buffer, and where each ends.
fn json_batch(events: &[Event], fields: Fields) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::with_capacity(events.len() * 512);
    let mut ends = Vec::with_capacity(events.len());
    for event in events {
        json::write_event_with(event, fields, &mut bytes);
        ends.push(bytes.len());
    }
    (bytes, ends)
}

fn default_type_names() -> Vec<String> {
    DEFAULT_TYPES.iter().map(|t| t.name().to_string()).collect()
}

fn to_python(py: Python<'_>, event: &Event, as_json: bool, fields: Fields) -> PyResult<PyObject> {
    if as_json {
        let json = json::to_json_with(event, fields);
        Ok(PyBytes::new(py, &json).into_any().unbind())
    } else {
        Ok(event_dict(py, event, fields)?.into_any().unbind())
    }
}

/// The same walk as `json::write_event_with`, as a dict with the keys in the same order.
fn event_dict<'py>(py: Python<'py>, event: &Event, fields: Fields) -> PyResult<Bound<'py, PyDict>> {
    let mut builder = DictBuilder {
        py,
        keys: interned_keys(py),
        open: Vec::with_capacity(4),
        key: None,
        root: None,
    };
    schema::walk(event, fields, &mut builder)?;
    builder
        .root
        .ok_or_else(|| PyValueError::new_err("the event's walk made no object"))
}

/// Every key as a Python string made once, indexed by `Key::index`.
fn interned_keys(py: Python<'_>) -> &[Py<PyString>] {
    static KEYS: GILOnceCell<Vec<Py<PyString>>> = GILOnceCell::new();
    KEYS.get_or_init(py, || {
        Key::ALL
            .iter()
            .map(|key| PyString::intern(py, key.name()).unbind())
            .collect()
    })
}

enum Container<'py> {
    Object(Bound<'py, PyDict>),
    List(Bound<'py, PyList>),
}

/// Builds nested dicts and lists from the schema's walk.
struct DictBuilder<'a, 'py> {
    py: Python<'py>,
    keys: &'a [Py<PyString>],
    /// Open containers, innermost last, each with the key it will have in its parent.
    open: Vec<(Option<Key>, Container<'py>)>,
    /// The key the next value goes under.
    key: Option<Key>,
    root: Option<Bound<'py, PyDict>>,
}

impl<'py> DictBuilder<'_, 'py> {
    fn insert(&mut self, value: Bound<'py, PyAny>) -> PyResult<()> {
        match self.open.last() {
            Some((_, Container::Object(dict))) => {
                let key = self.key.take().ok_or_else(|| {
                    PyValueError::new_err("the event's walk gave a value without a key")
                })?;
                dict.set_item(self.keys[key.index()].bind(self.py), value)
            }
            Some((_, Container::List(list))) => list.append(value),
            None => Err(PyValueError::new_err(
                "the event's walk gave a value outside its object",
            )),
        }
    }
}

impl<'py> schema::Visitor for DictBuilder<'_, 'py> {
    type Error = PyErr;

    fn begin_object(&mut self) -> PyResult<()> {
        let dict = PyDict::new(self.py);
        self.open.push((self.key.take(), Container::Object(dict)));
        Ok(())
    }

    fn begin_list(&mut self) -> PyResult<()> {
        let list = PyList::empty(self.py);
        self.open.push((self.key.take(), Container::List(list)));
        Ok(())
    }

    fn end(&mut self) -> PyResult<()> {
        let Some((key, container)) = self.open.pop() else {
            return Err(PyValueError::new_err(
                "the event's walk closed more than it opened",
            ));
        };
        let value = match container {
            Container::Object(dict) if self.open.is_empty() => {
                self.root = Some(dict);
                return Ok(());
            }
            Container::Object(dict) => dict.into_any(),
            Container::List(list) => list.into_any(),
        };
        self.key = key;
        self.insert(value)
    }

    fn key(&mut self, key: Key) -> PyResult<()> {
        self.key = Some(key);
        Ok(())
    }

    fn scalar(&mut self, value: Scalar) -> PyResult<()> {
        let py = self.py;
        let value = match value {
            Scalar::Uint(number) => number.into_pyobject(py)?.into_any(),
            Scalar::Bool(flag) => PyBool::new(py, flag).to_owned().into_any(),
            Scalar::Text(text) => PyString::new(py, text).into_any(),
            Scalar::Address(address) => {
                let text = address.map(|a| a.to_string()).unwrap_or_default();
                PyString::new(py, &text).into_any()
            }
            Scalar::Null => py.None().into_bound(py),
        };
        self.insert(value)
    }
}

/// `["state", "zone"]` -> the set; an unknown name is a ValueError naming the known ones.
fn parse_fields(names: &[String]) -> PyResult<Fields> {
    Fields::parse(names.iter().map(String::as_str)).map_err(PyValueError::new_err)
}

/// Decodes recorded netlink bytes (one datagram) the way the reader does; for tests and
/// tools that replay captures. Malformed messages raise ConntrackError.
#[pyfunction]
#[pyo3(signature = (datagram, *, timestamp_ms = 0, as_json = false, fields = Vec::new()))]
fn decode_datagram(
    py: Python<'_>,
    datagram: &[u8],
    timestamp_ms: u64,
    as_json: bool,
    fields: Vec<String>,
) -> PyResult<Vec<PyObject>> {
    let fields = parse_fields(&fields)?;
    let mut events = Vec::new();
    for message in decode::split_messages(datagram) {
        match message.and_then(|m| decode::decode(m, timestamp_ms)) {
            Ok(event) => events.push(to_python(py, &event, as_json, fields)?),
            Err(decode::Skip::NotAnEvent) => {}
            Err(decode::Skip::Malformed(reason)) => {
                return Err(ConntrackError::new_err(format!(
                    "malformed message: {reason}"
                )))
            }
        }
    }
    Ok(events)
}

/// Parses accept/ignore lists as EventStream does; ValueError (one line) for a bad item.
#[pyfunction]
fn check_filter(filter: HashMap<String, Vec<String>>) -> PyResult<()> {
    parse_filter(filter).map(|_| ())
}

/// `{"accept_protocols": ["tcp"], ...}`: the lists of `FilterText`, by name.
fn parse_filter(mut lists: HashMap<String, Vec<String>>) -> PyResult<Filter> {
    let mut take = |name: &str| lists.remove(name).unwrap_or_default();
    let text = FilterText {
        accept_protocols: take("accept_protocols"),
        ignore_protocols: take("ignore_protocols"),
        accept_addresses: take("accept_addresses"),
        ignore_addresses: take("ignore_addresses"),
        accept_tcp_states: take("accept_tcp_states"),
        ignore_tcp_states: take("ignore_tcp_states"),
    };
    if let Some(unknown) = lists.keys().next() {
        return Err(PyValueError::new_err(format!(
            "unknown filter list {unknown:?}"
        )));
    }
    Filter::parse(&text).map_err(PyValueError::new_err)
}

/// `NAME` -> /run/netns/NAME; a path stays as it is.
#[pyfunction]
fn netns_path(netns: &str) -> PathBuf {
    netns::path(netns)
}

/// `--tune-kernel`'s work, in `netns` (a name or path) or here: for each sysctl,
/// `(name, before, after, error)`. Python decides what to log.
#[pyfunction]
#[pyo3(signature = (netns=None, sysctl_dir=None))]
#[allow(clippy::type_complexity)]
fn tune_kernel(
    py: Python<'_>,
    netns: Option<&str>,
    sysctl_dir: Option<PathBuf>,
) -> PyResult<Vec<(&'static str, Option<String>, Option<String>, Option<String>)>> {
    let dir = sysctl_dir.unwrap_or_else(|| PathBuf::from(kernel::SYSCTL_DIR));
    let netns = netns.map(netns::path);
    let tuned = py.allow_threads(|| netns::run_in(netns.as_deref(), || kernel::tune(&dir)))?;
    Ok(tuned
        .into_iter()
        .map(|t| (t.name, t.before, t.after, t.error))
        .collect())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let all_types: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
    m.add("EVENT_TYPES", all_types)?;
    m.add("DEFAULT_TYPES", default_type_names())?;
    m.add("DEFAULT_BUFFER_BYTES", DEFAULT_BUFFER_BYTES)?;
    m.add("DEFAULT_QUEUE_EVENTS", DEFAULT_QUEUE_EVENTS)?;
    m.add("ConntrackError", m.py().get_type::<ConntrackError>())?;
    let field_names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
    m.add("FIELDS", PyTuple::new(m.py(), field_names)?)?;
    m.add_class::<EventStream>()?;
    m.add_function(wrap_pyfunction!(decode_datagram, m)?)?;
    m.add_function(wrap_pyfunction!(check_filter, m)?)?;
    m.add_function(wrap_pyfunction!(netns_path, m)?)?;
    m.add_function(wrap_pyfunction!(tune_kernel, m)?)?;
    Ok(())
}
