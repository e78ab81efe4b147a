"""Privilege drop in a forked child (it cannot be undone): uid, capabilities, AF_PACKET still works."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import socket
import threading
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from agent.privileges import CAP_NET_RAW, PrivilegeError, capability_sets, drop_privileges, keep_only_net_raw

ETH_P_ALL = 0x0003
NET_RAW = 1 << CAP_NET_RAW


def _in_child(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run FN in a forked child and return its JSON result (or its traceback as 'error')."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        os.close(read_fd)
        try:
            result = fn()
        except BaseException as exc:  # report everything to the parent
            result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        os.write(write_fd, json.dumps(result).encode())
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(b"".join(chunks))


def _status() -> dict[str, str]:
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _packet_socket_works() -> bool:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)):
        return True


@pytest.mark.root
def test_drop_to_nobody_keeps_only_net_raw() -> None:
    def child() -> dict[str, Any]:
        opened_before = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        result = drop_privileges("nobody")
        status = _status()
        opened_before.settimeout(0.01)
        with contextlib.suppress(TimeoutError):  # the capture opened as root keeps working
            opened_before.recv(65535)
        try:
            os.setuid(0)
            regained = True
        except PermissionError:
            regained = False
        try:
            open("/etc/shadow").close()
            read_shadow = True
        except PermissionError:
            read_shadow = False
        return {
            "result": [result.user, result.uid, result.gid, result.changed] if result else None,
            "uid": status["Uid"].split(),
            "gid": status["Gid"].split(),
            "groups": status["Groups"],
            "eff": int(status["CapEff"], 16),
            "prm": int(status["CapPrm"], 16),
            "inh": int(status["CapInh"], 16),
            "amb": int(status["CapAmb"], 16),
            "bnd": int(status["CapBnd"], 16),
            "nnp": status["NoNewPrivs"],
            "packet": _packet_socket_works(),
            "regained": regained,
            "read_shadow": read_shadow,
        }

    nobody = pwd.getpwnam("nobody")
    out = _in_child(child)
    assert "error" not in out, out.get("trace")
    assert out["result"] == ["nobody", nobody.pw_uid, nobody.pw_gid, True]
    assert out["uid"] == [str(nobody.pw_uid)] * 4
    assert out["gid"] == [str(nobody.pw_gid)] * 4
    assert out["groups"] == ""
    assert out["eff"] == NET_RAW and out["prm"] == NET_RAW
    assert out["inh"] == 0 and out["amb"] == 0 and out["bnd"] == NET_RAW
    assert out["nnp"] == "1"
    assert out["packet"] is True
    assert out["regained"] is False and out["read_shadow"] is False


@pytest.mark.root
def test_refuses_with_threads_running() -> None:
    def child() -> dict[str, Any]:
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        try:
            drop_privileges("nobody")
            return {"raised": False, "uid": os.getuid()}
        except PrivilegeError as exc:
            return {"raised": True, "msg": str(exc), "uid": os.getuid()}
        finally:
            stop.set()
            thread.join()

    out = _in_child(child)
    assert out == {"raised": True, "msg": "privileges must be dropped before any thread is started", "uid": 0}


@pytest.mark.root
def test_unknown_user_changes_nothing() -> None:
    def child() -> dict[str, Any]:
        try:
            drop_privileges("no-such-user-espmeter")
        except PrivilegeError as exc:
            return {"msg": str(exc), "uid": os.getuid(), "eff": capability_sets()["CapEff"]}
        return {"msg": None}

    before = capability_sets()["CapEff"]
    out = _in_child(child)
    assert out == {"msg": "user 'no-such-user-espmeter' does not exist", "uid": 0, "eff": before}


def test_no_user_configured_is_a_noop() -> None:
    before = capability_sets()
    assert drop_privileges(None) is None
    assert capability_sets() == before


@pytest.mark.root
def test_unprivileged_start_only_trims_capabilities() -> None:
    """As under systemd's DynamicUser: started non-root with extra capabilities; keep CAP_NET_RAW only."""

    def child() -> dict[str, Any]:
        nobody = pwd.getpwnam("nobody")
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(8, ctypes.c_ulong(1), 0, 0, 0) == 0  # PR_SET_KEEPCAPS: keep the permitted set
        os.setresgid(nobody.pw_gid, nobody.pw_gid, nobody.pw_gid)
        os.setresuid(nobody.pw_uid, nobody.pw_uid, nobody.pw_uid)
        before = capability_sets()["CapPrm"]
        result = drop_privileges("no-such-user-is-fine-when-not-root")
        caps = capability_sets()
        return {
            "before_has_more": before & ~NET_RAW != 0,
            "changed": result.changed if result else None,
            "uid": result.uid if result else None,
            "eff": caps["CapEff"],
            "prm": caps["CapPrm"],
            "packet": _packet_socket_works(),
        }

    out = _in_child(child)
    assert "error" not in out, out.get("trace")
    uid = pwd.getpwnam("nobody").pw_uid
    assert out == {
        "before_has_more": True,
        "changed": False,
        "uid": uid,
        "eff": NET_RAW,
        "prm": NET_RAW,
        "packet": True,
    }


@pytest.mark.root
def test_keep_only_net_raw_as_root() -> None:
    def child() -> dict[str, Any]:
        keep_only_net_raw()
        caps = capability_sets()
        return {"eff": caps["CapEff"], "prm": caps["CapPrm"], "packet": _packet_socket_works()}

    assert _in_child(child) == {"eff": NET_RAW, "prm": NET_RAW, "packet": True}


def test_already_minimal_capabilities_need_no_capset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the unit, capset is denied by SystemCallFilter=~@privileged; trimming must not call it."""
    import agent.privileges as privileges

    def refuse(*_args: object) -> None:
        raise PrivilegeError("capset denied")

    monkeypatch.setattr(privileges, "capability_sets", lambda: {"CapPrm": NET_RAW, "CapEff": NET_RAW})
    monkeypatch.setattr(privileges, "_capset", refuse)
    assert keep_only_net_raw() == NET_RAW
    monkeypatch.setattr(privileges, "capability_sets", lambda: {"CapPrm": NET_RAW | 1, "CapEff": NET_RAW})
    with pytest.raises(PrivilegeError, match="capset denied"):
        keep_only_net_raw()
