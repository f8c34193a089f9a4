//! Network namespaces: the one place that names, opens and enters them.
//!
//! `setns(2)` moves only the calling thread, so work that must run in another namespace (the
//! reader, `--tune-kernel`) runs on a thread of its own, and the rest of the process (the
//! publisher) stays where it is. Entering needs CAP_SYS_ADMIN as well as CAP_NET_ADMIN.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `NAME` means /run/netns/NAME (as `ip netns` makes them); anything with a slash is a path.
pub fn path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        PathBuf::from("/run/netns").join(netns)
    }
}

/// Opens a namespace to enter later, from the thread that will work in it.
pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| {
        // A/B with A a file (ENOTDIR) is missing just as well.
        if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) {
            Error::NamespaceNotFound(format!("network namespace not found: {}", path.display()))
        } else {
            Error::os(
                format!("cannot open network namespace {}", path.display()),
                e,
            )
        }
    })
}

/// Moves the calling thread into the namespace opened from `path` (named in errors).
pub fn enter(netns: &File, path: &Path) -> Result<()> {
    // SAFETY: setns(2) on a descriptor we own, alive for the call.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        let err = std::io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EPERM) => Error::Permission(
                "entering another network namespace needs CAP_SYS_ADMIN: run as root".into(),
            ),
            Some(libc::EINVAL) => {
                Error::InvalidArgument(format!("{} is not a network namespace", path.display()))
            }
            _ => Error::os("cannot enter the network namespace", err),
        });
    }
    Ok(())
}

/// Runs `work` in the namespace at `path` (or here, with `None`) on a short-lived thread,
/// so the caller's thread never changes namespace.
pub fn run_in<T: Send>(path: Option<&Path>, work: impl FnOnce() -> T + Send) -> Result<T> {
    let Some(path) = path else {
        return Ok(work());
    };
    let netns = open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                enter(&netns, path)?;
                Ok(work())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
