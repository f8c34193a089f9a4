//! The NETLINK_NETFILTER socket joined to ctnetlink's event groups. Plain system calls.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::error::{Error, Result};

const NETLINK_NETFILTER: libc::c_int = 12;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NETLINK_DROP_MEMBERSHIP: libc::c_int = 2;
const NETLINK_BROADCAST_ERROR: libc::c_int = 4;
const NETLINK_NO_ENOBUFS: libc::c_int = 5;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET_STATS: u16 = 5;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
// The same on every architecture we build for (not on sparc, whose value is different).
const SO_ATTACH_FILTER: libc::c_int = 26;
// getsockopt(SO_MEMINFO) fills u32 counters; the drops counter is index 8
// (SK_MEMINFO_DROPS, since Linux 4.6). Same value on every architecture we build for.
const SO_MEMINFO: libc::c_int = 55;
const SK_MEMINFO_DROPS: usize = 8;

/// What one `recv` gave.
pub enum Received {
    /// This many datagrams, each holding one or more netlink messages.
    Datagrams(usize),
    /// Nothing arrived within the receive timeout.
    Timeout,
    /// The kernel dropped events because the socket buffer was full (ENOBUFS).
    Overrun,
}

pub struct EventSocket {
    fd: OwnedFd,
}

impl EventSocket {
    /// Opens the socket and joins the given ctnetlink multicast groups.
    pub fn open(groups: &[u32]) -> Result<Self> {
        let socket = Self::open_unsubscribed()?;
        for &group in groups {
            socket
                .set_int(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group as libc::c_int)
                .map_err(|err| match err.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::EACCES) => permission_error(),
                    _ => Error::os(format!("cannot join netlink group {group}"), err),
                })?;
        }
        Ok(socket)
    }

    /// Asks ctnetlink for its statistics, to tell a kernel without ctnetlink (or a caller
    /// without CAP_NET_ADMIN) apart before waiting for events that would never come.
    pub fn probe_ctnetlink() -> Result<()> {
        let socket = Self::open_unsubscribed()?;
        socket
            .set_receive_timeout(Duration::from_secs(1))
            .map_err(|e| Error::os("cannot set a receive timeout", e))?;
        let mut request = [0u8; 20];
        request[0..4].copy_from_slice(&20u32.to_ne_bytes());
        request[4..6]
            .copy_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET_STATS).to_ne_bytes());
        request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        request[8..12].copy_from_slice(&1u32.to_ne_bytes());
        // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0.
        // SAFETY: the pointer and length describe `request`, alive for the call.
        let sent = unsafe {
            libc::send(
                socket.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(Error::os(
                "cannot ask ctnetlink for its statistics",
                io::Error::last_os_error(),
            ));
        }
        let mut reply = [0u8; 4096];
        let mut length = [None];
        for _ in 0..4 {
            let Ok(Received::Datagrams(1)) = socket.recv_batch(&mut reply, 4096, &mut length, true)
            else {
                return Ok(());
            };
            let reply = reply.get(..length[0].unwrap_or(0)).unwrap_or(&[]);
            let message_type = reply.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
            if message_type != Some(NLMSG_ERROR) {
                continue;
            }
            let errno = reply
                .get(16..20)
                .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            return match errno {
                0 => Ok(()),
                libc::EPERM | libc::EACCES => Err(permission_error()),
                libc::EOPNOTSUPP | libc::ENOENT => Err(Error::KernelUnsupported(
                    "this kernel has no ctnetlink: load it with `modprobe nf_conntrack_netlink` \
                     (needs CONFIG_NF_CT_NETLINK)"
                        .into(),
                )),
                other => Err(Error::os(
                    "ctnetlink refused a statistics request",
                    io::Error::from_raw_os_error(other),
                )),
            };
        }
        Ok(())
    }

    fn open_unsubscribed() -> Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EPROTONOSUPPORT) | Some(libc::EAFNOSUPPORT) => Error::KernelUnsupported(
                    "this kernel has no nfnetlink (CONFIG_NETFILTER_NETLINK): \
                     conntrack events cannot be read"
                        .into(),
                ),
                _ => Error::os("cannot open the netlink socket", err),
            });
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let socket = EventSocket {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        };
        socket.bind()?;
        Ok(socket)
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: sockaddr_nl is plain data; zero is a valid value for every field.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the pointer and length describe `address`, alive for the call.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&address as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(Error::os(
                "cannot bind the netlink socket",
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Asks for a receive buffer of `bytes`; returns what the kernel granted.
    ///
    /// SO_RCVBUFFORCE ignores net.core.rmem_max but needs CAP_NET_ADMIN; without it
    /// SO_RCVBUF gets at most rmem_max.
    pub fn set_receive_buffer(&self, bytes: usize) -> io::Result<usize> {
        let requested = bytes.min(i32::MAX as usize / 2) as libc::c_int;
        if self
            .set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, requested)
            .is_err()
        {
            self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, requested)?;
        }
        // The kernel doubles the value for its bookkeeping and reports the doubled size.
        let granted = self.get_int(libc::SOL_SOCKET, libc::SO_RCVBUF)?;
        Ok(usize::try_from(granted).unwrap_or(0) / 2)
    }

    /// The kernel's reliable delivery (conntrackd's NetlinkEventsReliable): a failed
    /// delivery makes ctnetlink keep the DESTROY event and send it again, instead of
    /// dropping it and flagging ENOBUFS.
    pub fn set_reliable(&self) -> io::Result<()> {
        self.set_int(SOL_NETLINK, NETLINK_BROADCAST_ERROR, 1)?;
        self.set_int(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    }

    /// Leaves the multicast groups: the kernel queues nothing more for us, so what the
    /// buffer holds from now on is finite and can be read to the end (at stop).
    pub fn leave(&self, groups: &[u32]) -> io::Result<()> {
        for &group in groups {
            self.set_int(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, group as libc::c_int)?;
        }
        Ok(())
    }

    /// The kernel's count of messages it could not queue on this socket (its buffer was
    /// full), in both modes: ENOBUFS is reported once per overrun, NETLINK_NO_ENOBUFS
    /// reports nothing, this counts every one. A u32 that wraps; `None` on a kernel too old
    /// to say (before 4.6).
    pub fn drops(&self) -> Option<u32> {
        let mut values = [0u32; SK_MEMINFO_DROPS + 1];
        let mut len = size_of::<[u32; SK_MEMINFO_DROPS + 1]>() as libc::socklen_t;
        // SAFETY: the pointers describe `values` and `len`, alive for the call; the kernel
        // writes at most `len` bytes and says how many.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_MEMINFO,
                values.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let complete = len as usize >= size_of::<[u32; SK_MEMINFO_DROPS + 1]>();
        (rc == 0 && complete).then_some(values[SK_MEMINFO_DROPS])
    }

    /// Attaches a classic BPF socket filter: the kernel runs it on every message before
    /// queueing it, and drops those it returns 0 for. The kernel checks the program here.
    pub fn attach_filter(&self, program: &[crate::filter::Instruction]) -> io::Result<()> {
        let mut instructions: Vec<libc::sock_filter> = program
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        let length = u16::try_from(instructions.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let program = libc::sock_fprog {
            len: length,
            filter: instructions.as_mut_ptr(),
        };
        self.set_raw(libc::SOL_SOCKET, SO_ATTACH_FILTER, &program)
    }

    /// Waits until the socket has something to read (data or an error such as ENOBUFS) or
    /// `wake` is readable; without a timeout.
    pub fn wait_readable(&self, wake: BorrowedFd<'_>) -> io::Result<()> {
        let mut fds = [self.fd.as_raw_fd(), wake.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        loop {
            // SAFETY: `fds` lives through the call and its length is passed with it.
            if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, -1) } >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        }
    }

    /// Bounds every `recv` (the probe's wait for the kernel's answer).
    // musl's libc crate marks time_t deprecated (its width changes in musl 1.2); timeval
    // still takes it, and the value fits either width.
    #[allow(deprecated)]
    pub fn set_receive_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        self.set_raw(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
    }

    /// Receives up to `lengths.len()` datagrams in one system call (a burst costs one call
    /// per batch, not per event): datagram `i` lands in `slots.chunks(slot_bytes)[i]` and its
    /// length in `lengths[i]` (`None` when it did not fit its slot). Waits, within the receive
    /// timeout, only for the first; with `wait` false, not at all (Timeout: the buffer is empty).
    pub fn recv_batch(
        &self,
        slots: &mut [u8],
        slot_bytes: usize,
        lengths: &mut [Option<usize>],
        wait: bool,
    ) -> io::Result<Received> {
        let flags = if wait {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
        let mut iovecs: Vec<libc::iovec> = slots
            .chunks_mut(slot_bytes)
            .take(lengths.len())
            .map(|slot| libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot.len(),
            })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iovec| {
                // SAFETY: msghdr and mmsghdr are plain data; zero is valid for every field.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_iov = iovec;
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        loop {
            // SAFETY: `headers` and the iovecs and slots they point to outlive the call.
            let n = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    headers.as_mut_ptr(),
                    headers.len() as _,
                    flags as _,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                let received = headers.iter().take(n as usize);
                for (length, header) in lengths.iter_mut().zip(received) {
                    let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                    *length = (!truncated).then_some(header.msg_len as usize);
                }
                return Ok(Received::Datagrams(n as usize));
            }
            match receive_error()? {
                Some(received) => return Ok(received),
                None => continue,
            }
        }
    }

    fn set_int(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        self.set_raw(level, name, &value)
    }

    fn set_raw<T>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
        // SAFETY: the pointer and length describe `value`, alive for the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                size_of::<T>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn get_int(&self, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the pointers describe `value` and `len`, alive for the call.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(value)
    }
}

/// What a failed receive means: `None` to try again (EINTR), or a timeout, an overrun, an error.
fn receive_error() -> io::Result<Option<Received>> {
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINTR) => Ok(None),
        Some(libc::EAGAIN) => Ok(Some(Received::Timeout)),
        Some(libc::ENOBUFS) => Ok(Some(Received::Overrun)),
        _ => Err(err),
    }
}

fn permission_error() -> Error {
    Error::Permission(
        "reading conntrack events needs CAP_NET_ADMIN: run as root, or grant the capability \
         (setcap cap_net_admin+ep, or systemd AmbientCapabilities=CAP_NET_ADMIN)"
            .into(),
    )
}
