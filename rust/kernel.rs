//! Start-up checks of the kernel's conntrack settings, read in the watched namespace.
//!
//! Each finding is one warning in plain words; none of them stops the stream.

use std::fs;

const SYSCTL_DIR: &str = "/proc/sys/net/netfilter";

fn read_sysctl(path: &str) -> Option<i64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Fails when the kernel has no conntrack in this namespace at all.
pub fn check_conntrack_present() -> crate::error::Result<()> {
    if fs::metadata(format!("{SYSCTL_DIR}/nf_conntrack_max")).is_err() {
        return Err(crate::Error::KernelUnsupported(
            "conntrack is not available in this kernel: load it with `modprobe nf_conntrack_netlink` \
             (needs CONFIG_NF_CONNTRACK and CONFIG_NF_CT_NETLINK)"
                .into(),
        ));
    }
    Ok(())
}

/// Warnings about settings that make events incomplete or missing.
pub fn settings_warnings() -> Vec<String> {
    let mut warnings = Vec::new();
    if read_sysctl(&format!("{SYSCTL_DIR}/nf_conntrack_acct")) == Some(0) {
        warnings.push(
            "net.netfilter.nf_conntrack_acct=0: DESTROY events will carry 0 packets and 0 bytes \
             (enable counters with `sysctl -w net.netfilter.nf_conntrack_acct=1`)"
                .to_string(),
        );
    }
    match read_sysctl(&format!("{SYSCTL_DIR}/nf_conntrack_events")) {
        Some(0) => warnings.push(
            "net.netfilter.nf_conntrack_events=0: the kernel sends no conntrack events at all \
             (enable them with `sysctl -w net.netfilter.nf_conntrack_events=1`)"
                .to_string(),
        ),
        Some(2) => warnings.push(
            "net.netfilter.nf_conntrack_events=2: flows that began before this listener subscribed \
             produce no events, not even their DESTROY (set it to 1 to have events for every flow)"
                .to_string(),
        ),
        _ => {}
    }
    warnings
}

/// The kernel stamps a flow's start and stop only with nf_conntrack_timestamp=1; without it
/// the `timestamps` fields stay null.
pub fn timestamps_warning() -> Option<String> {
    (read_sysctl(&format!("{SYSCTL_DIR}/nf_conntrack_timestamp")) == Some(0)).then(|| {
        "net.netfilter.nf_conntrack_timestamp=0: Start, Stop and Duration will be null \
         (enable flow timestamps with `sysctl -w net.netfilter.nf_conntrack_timestamp=1`, \
         or --tune-kernel)"
            .to_string()
    })
}

/// `net.core.rmem_max`: the most an unprivileged SO_RCVBUF can ask for.
pub fn rmem_max_bytes() -> Option<i64> {
    read_sysctl("/proc/sys/net/core/rmem_max")
}
