//! conntrack events from the kernel's ctnetlink multicast groups.
//!
//! The data flows one way: `socket` (the netlink socket) -> `reader` (its own thread)
//! -> `decode` (bytes to `Event`) -> `queue` (bounded) -> consumer (`json`, or `python`);
//! both consumers follow the one description of the message in `schema`.
//! Everything but `python.rs` is plain Rust, tested without Python.

pub mod decode;
pub mod error;
pub mod event;
pub mod filter;
pub mod json;
pub mod kernel;
pub mod netns;
pub mod queue;
pub mod reader;
pub mod schema;
pub mod socket;
pub mod wake;

#[cfg(feature = "python")]
mod python;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod filter_tests;

pub use error::Error;
pub use event::{Direction, Event, EventType};
pub use schema::{Field, Fields};
