//! Start-up checks of the kernel's conntrack settings, read in the watched namespace.
//!
//! Each finding is one warning in plain words; none of them stops the stream.

use std::fs;
use std::path::Path;

pub const SYSCTL_DIR: &str = "/proc/sys/net/netfilter";

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

/// `--tune-kernel`: sysctl name (under net.netfilter) -> the value that makes events complete.
///   acct: DESTROY events carry packet and byte counters only when accounting is on.
///   timestamp: flows get start and stop times.
///   events: at 2 (the kernel's default, "only while someone listens") a flow created while the
///     collector was not running (restart, upgrade) never produces its DESTROY; 1 always does.
pub const TUNED_SYSCTLS: [(&str, &str); 3] = [
    ("nf_conntrack_acct", "1"),
    ("nf_conntrack_timestamp", "1"),
    ("nf_conntrack_events", "1"),
];

/// What `tune` did to one sysctl.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuned {
    pub name: &'static str,
    /// None: the sysctl does not exist in this kernel, or could not be read.
    pub before: Option<String>,
    pub after: Option<String>,
    pub error: Option<String>,
}

/// Sets `TUNED_SYSCTLS` under `sysctl_dir` (the calling thread's namespace). A sysctl that is
/// missing or cannot be written is reported in its `Tuned`, and the rest go on.
pub fn tune(sysctl_dir: &Path) -> Vec<Tuned> {
    TUNED_SYSCTLS
        .iter()
        .map(|&(name, wanted)| tune_one(sysctl_dir, name, wanted))
        .collect()
}

fn tune_one(sysctl_dir: &Path, name: &'static str, wanted: &str) -> Tuned {
    let path = sysctl_dir.join(name);
    let failed = |before: Option<String>, error: String| Tuned {
        name,
        after: before.clone(),
        before,
        error: Some(error),
    };
    let before = match fs::read_to_string(&path) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return failed(None, "not available in this kernel".into())
        }
        Err(e) => return failed(None, plain(&e)),
    };
    if before != wanted {
        if let Err(e) = fs::write(&path, wanted) {
            let mut reason = plain(&e);
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                reason += " (needs CAP_NET_ADMIN and a writable /proc/sys)";
            }
            return failed(Some(before), reason);
        }
    }
    let after = fs::read_to_string(&path).ok().map(|t| t.trim().to_string());
    Tuned {
        name,
        before: Some(before),
        after,
        error: None,
    }
}

/// An I/O error as the system says it ("Permission denied"), without Rust's "(os error 13)".
fn plain(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}
