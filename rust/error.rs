//! The crate's one error type; `python.rs` maps it onto Python exceptions.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// The netlink socket could not join the conntrack groups: CAP_NET_ADMIN is missing.
    Permission(String),
    /// The network namespace given by name or path does not exist.
    NamespaceNotFound(String),
    /// The kernel lacks conntrack, nfnetlink or ctnetlink.
    KernelUnsupported(String),
    /// A bad argument from the caller (an unknown event type, say).
    InvalidArgument(String),
    /// Any other system call failure, with what we were doing.
    Os { context: String, source: io::Error },
}

impl Error {
    pub fn os(context: impl Into<String>, source: io::Error) -> Self {
        Error::Os {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Permission(msg)
            | Error::NamespaceNotFound(msg)
            | Error::KernelUnsupported(msg)
            | Error::InvalidArgument(msg) => f.write_str(msg),
            Error::Os { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
