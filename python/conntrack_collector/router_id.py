"""The router id: a stable, anonymous name for this machine, sent as the `router_id` header."""

from __future__ import annotations

from pathlib import Path

SYS_CLASS_NET = Path("/sys/class/net")
IFF_UP = 0x1
IFF_LOOPBACK = 0x8


def router_id_from_mac(mac: str) -> str:
    """The first 12 hex digits of SHA-256 over the MAC's text form `aa:bb:cc:dd:ee:ff`."""
    import hashlib  # only now: it loads OpenSSL (3.5 MiB resident), which stdout needs not

    return hashlib.sha256(mac.lower().encode("ascii")).hexdigest()[:12]


def first_hardware_address(sys_class_net: Path = SYS_CLASS_NET) -> str | None:
    """The MAC of the up interface with the lowest ifindex, as the reference (Go's
    net.Interfaces, in ifindex order, FlagUp, non-empty HardwareAddr) picked it."""
    candidates: list[tuple[int, str]] = []
    for iface in sys_class_net.iterdir():
        try:
            flags = int((iface / "flags").read_text().strip(), 16)
            ifindex = int((iface / "ifindex").read_text().strip())
            mac = (iface / "address").read_text().strip().lower()
        except (OSError, ValueError):
            continue  # vanished while we looked, or a virtual file we cannot parse
        if not flags & IFF_UP or flags & IFF_LOOPBACK:
            continue
        # Go treats an all-zero address as no address at all (tun devices, loopback).
        if not mac or not mac.replace(":", "").strip("0"):
            continue
        candidates.append((ifindex, mac))
    return min(candidates)[1] if candidates else None


def default_router_id(sys_class_net: Path = SYS_CLASS_NET) -> str:
    """The computed router id, or "unknown" on a machine with no up interface with a MAC."""
    mac = first_hardware_address(sys_class_net)
    return router_id_from_mac(mac) if mac else "unknown"
