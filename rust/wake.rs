//! A wake-up the consumer sends the reader thread, so that the reader can wait on its socket
//! without a timeout: an idle stream costs no periodic wake-ups, and a stop is seen at once.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

/// An eventfd: readable once `signal` has been called, for good (it is never reset).
pub struct Wake {
    fd: OwnedFd,
}

impl Wake {
    pub fn new() -> Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::os(
                "cannot create an eventfd",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
        Ok(Wake {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, which lives through the call. It can only fail
        // if the counter would overflow, and then the descriptor is readable already.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }
}

impl AsFd for Wake {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
