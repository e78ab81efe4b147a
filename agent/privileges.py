"""Drop root to a configured user after the capture is open, keeping only CAP_NET_RAW.

CAP_NET_RAW stays so interfaces can be re-opened on reload. Uses prctl/capset from
libc through ctypes (no python-prctl dependency). Under the shipped systemd unit
the agent is never root (DynamicUser + AmbientCapabilities), and this only trims
capabilities.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

CAP_NET_RAW = 13
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    """The drop could not be done safely; the agent must not go on running as root."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class DropResult:
    """What drop_privileges did; ``changed`` is False when we were not root."""

    user: str
    uid: int
    gid: int
    changed: bool


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(libc: ctypes.CDLL, option: int, arg: int = 0, ignore: tuple[int, ...] = ()) -> None:
    args = [ctypes.c_ulong(v) for v in (arg, 0, 0, 0)]
    if libc.prctl(ctypes.c_int(option), *args) != 0:
        err = ctypes.get_errno()
        if err not in ignore:
            raise PrivilegeError(f"prctl({option}, {arg}) failed: {os.strerror(err)}")


def _capset(libc: ctypes.CDLL, effective: int, permitted: int, inheritable: int = 0) -> None:
    """Set this thread's capability sets (64-bit masks, split into the two v3 words)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in (0, 1):
        shift = 32 * word
        data[word].effective = (effective >> shift) & 0xFFFFFFFF
        data[word].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[word].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    if libc.capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"capset failed: {os.strerror(ctypes.get_errno())}")


def process_status() -> dict[str, str]:
    """/proc/self/status as a dict: the kernel's own view of uid and capabilities."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def capability_sets() -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb as integers."""
    status = process_status()
    return {k: int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") if k in status}


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 63


def keep_only_net_raw() -> int:
    """Reduce permitted/effective to CAP_NET_RAW (if held); always allowed, even unprivileged."""
    caps = capability_sets()
    keep = caps.get("CapPrm", 0) & (1 << CAP_NET_RAW)
    libc = _libc()
    if (caps.get("CapPrm", 0), caps.get("CapEff", 0)) != (keep, keep):
        _capset(libc, keep, keep)  # skipped when already minimal: the unit's seccomp filter denies capset
    _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, ignore=(errno.EINVAL,))
    return keep


def drop_privileges(user: str | None) -> DropResult | None:
    """Become USER with only CAP_NET_RAW; call after the capture is open and before starting threads.

    capset() affects only the calling thread, so a multi-threaded process is refused
    rather than left with full capabilities in its other threads.
    """
    if user is None:
        return None
    if os.geteuid() != 0:  # e.g. systemd DynamicUser: already someone else, just trim
        keep_only_net_raw()
        return DropResult(user=_user_name(os.geteuid()), uid=os.geteuid(), gid=os.getegid(), changed=False)
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"user {user!r} does not exist") from None
    if _thread_count() != 1:
        raise PrivilegeError("privileges must be dropped before any thread is started")
    _switch_user(entry)
    _verify(entry)
    return DropResult(user=user, uid=entry.pw_uid, gid=entry.pw_gid, changed=True)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a dynamic user without nss-systemd
        return str(uid)


def _switch_user(entry: pwd.struct_passwd) -> None:
    libc = _libc()
    for cap in range(_last_cap() + 1):  # needs CAP_SETPCAP, so before setuid
        if cap != CAP_NET_RAW:
            _prctl(libc, _PR_CAPBSET_DROP, cap, ignore=(errno.EINVAL,))
    _prctl(libc, _PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    _prctl(libc, _PR_SET_KEEPCAPS, 0)
    # setuid cleared the effective set; re-raise only CAP_NET_RAW. No ambient: children get nothing.
    _capset(libc, 1 << CAP_NET_RAW, 1 << CAP_NET_RAW)
    _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, ignore=(errno.EINVAL,))
    _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1)


def _verify(entry: pwd.struct_passwd) -> None:
    """Trust the kernel's report, not our calls: a silent failure here would leave root running."""
    if os.getresuid() != (entry.pw_uid,) * 3 or os.getresgid() != (entry.pw_gid,) * 3:
        raise PrivilegeError("uid/gid did not change")
    caps = capability_sets()
    if caps.get("CapEff") != 1 << CAP_NET_RAW or caps.get("CapPrm") != 1 << CAP_NET_RAW:
        raise PrivilegeError(f"unexpected capabilities after drop: {caps}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError("could regain root after dropping privileges")
