"""Run espmeter, argus, softflowd, tcpdump and a C floor side by side on the same captures.

Each capture is generated once (bench/gen.py, seeded) and read by every tool in turn, round after
round (the order rotates each round); the table shows per-tool medians over the rounds. CPU time
and peak RSS are the child's own (os.wait4), so the load of other work on the machine mostly shows
in the wall time only. Results also go to OUT/results.json.

    python bench/run.py [--packets 2000000] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import gen  # noqa: E402

TOOLS = ("espmeter", "argus", "softflowd", "tcpdump", "cfloor")
CAPTURES = {  # name -> gen.generate keyword arguments
    "esp": {"encap": "esp"},
    "udp4500": {"encap": "udp"},
    "mix20": {"encap": "esp", "mix": 0.2},
    "concentrator": {"encap": "esp", "popularity": "zipf"},  # --concentrator-sas SAs, not --sas
}
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


@dataclass(slots=True)
class Run:
    wall: float
    cpu: float
    rss_mb: float
    rc: int
    lost: int | None = None  # what the tool says was lost, when it says it
    wrong: int | None = None  # SAs the tool got wrong against the truth, when it can be checked


@dataclass(slots=True)
class Tool:
    name: str
    argv: Callable[[Path, Path], list[str]]  # (capture, out dir) -> argv
    parse: Callable[[Path], int | None] = lambda _out: None  # stdout file -> lost total
    check: Callable[[Path, dict], int | None] = lambda _out, _truth: None  # (stdout, truth) -> SAs wrong
    runs: list[Run] = field(default_factory=list)


# -- the tools ---------------------------------------------------------------------------------
def espmeter_argv(cap: Path, _out: Path) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "read", str(cap), "--json"]


def espmeter_lost(stdout: Path) -> int | None:
    try:
        return sum(sa["lost"] for sa in json.loads(stdout.read_text())["sas"])
    except (ValueError, KeyError):
        return None


def espmeter_wrong(stdout: Path, truth: dict) -> int | None:
    """SAs of the truth whose packets or loss differ in `read --json`, or that are missing or there twice,
    plus entries the truth does not know (all of them without a document)."""
    want = gen.sa_truth(truth)
    try:
        sas = json.loads(stdout.read_text())["sas"]
    except (ValueError, KeyError):
        return len(want)
    got: dict[tuple[str, str, int], tuple[int, int]] = {}
    wrong = 0
    for sa in sas:
        key = (sa["src"], sa["dst"], sa["spi"])
        wrong += key in got or key not in want
        got[key] = (sa["packets"], sa["lost"])
    return wrong + sum(got.get(key) != value for key, value in want.items())


def cfloor_lost(stdout: Path) -> int | None:
    words = stdout.read_text().split()
    return int(words[words.index("lost") + 1]) if "lost" in words else None


def free_udp_port() -> int:
    """A local UDP port nobody listens on (softflowd's exports go there and are dropped)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_cfloor(out: Path) -> Path | None:
    """Compile bench/cfloor.c against libpcap; None (and why) when there is no compiler or libpcap."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        print("cfloor: skipped, no C compiler")
        return None
    exe = out / "cfloor"
    proc = subprocess.run([cc, "-O2", "-o", str(exe), str(BENCH / "cfloor.c"), "-lpcap"],
                          capture_output=True, text=True)
    if proc.returncode:
        print(f"cfloor: skipped, build failed: {proc.stderr.strip()}")
        return None
    return exe


def make_tools(wanted: list[str], out: Path) -> list[Tool]:
    """The tools to run, skipping (and saying so) any whose binary is absent."""
    port = free_udp_port()
    tools = {
        "espmeter": Tool("espmeter", espmeter_argv, espmeter_lost, espmeter_wrong),
        "argus": Tool("argus", lambda c, o: ["argus", "-X", "-r", str(c), "-w", str(o / "peer.argus")]),
        "softflowd": Tool("softflowd", lambda c, _o: ["softflowd", "-r", str(c), "-n",
                                                            f"127.0.0.1:{port}", "-v", "10"]),
        "tcpdump": Tool("tcpdump", lambda c, _o: ["tcpdump", "-n", "-r", str(c)]),
    }
    if "cfloor" in wanted and (exe := build_cfloor(out)) is not None:
        tools["cfloor"] = Tool("cfloor", lambda c, _o: [str(exe), str(c)], cfloor_lost)
    chosen = []
    for name in wanted:
        tool = tools.get(name)
        if tool is None:
            continue
        if name in ("argus", "softflowd", "tcpdump") and shutil.which(name, path=SBIN) is None:
            print(f"{name}: skipped, binary not found")
            continue
        chosen.append(tool)
    return chosen


# -- measuring -----------------------------------------------------------------------------------
def measure(argv: list[str], stdout: Path) -> Run:
    """Run `argv` to its end: wall time, the child's user+sys CPU time (os.wait4) and its peak RSS.

    The peak RSS comes from GNU time when it is there: a child spawned straight from this (large)
    interpreter inherits the parent's RSS high-water mark in its ru_maxrss across exec.
    """
    # as an installed package runs: with its bytecode cached (a shell with PYTHONDONTWRITEBYTECODE set
    # would have espmeter compile its modules on every run, ~0.08 s of each figure)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "PATH": SBIN}
    rss_file = stdout.with_suffix(".rss")
    wrap = [GNU_TIME, "-f", "%M", "-o", str(rss_file)] if GNU_TIME else []
    with stdout.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([*wrap, *argv], stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kb = ru.ru_maxrss
    if GNU_TIME and rss_file.exists():
        rss_kb = int(rss_file.read_text().split()[-1])
    return Run(wall, ru.ru_utime + ru.ru_stime, rss_kb / 1024, proc.returncode)


def warm(path: Path) -> None:
    """Read the file once so every tool finds it in the page cache."""
    with path.open("rb") as f:
        while f.read(1 << 22):
            pass


def rounds(tools: list[Tool], cap: Path, truth: dict, out: Path, n: int) -> None:
    """Alternate the tools on `cap` for `n` rounds, rotating the order each round; check every run."""
    for r in range(n):
        order = tools[r % len(tools):] + tools[:r % len(tools)]
        for tool in order:
            stdout = out / f"{tool.name}.stdout"
            run = measure(tool.argv(cap, out), stdout)
            run.lost = tool.parse(stdout)
            run.wrong = tool.check(stdout, truth)
            tool.runs.append(run)
            checked = "" if run.wrong is None else f"  SAs wrong {run.wrong}"
            print(f"  round {r + 1} {tool.name:<10} wall {run.wall:7.2f} s  cpu {run.cpu:7.2f} s"
                  f"  rss {run.rss_mb:7.1f} MB  rc {run.rc}{checked}", flush=True)
    (out / "peer.argus").unlink(missing_ok=True)


def medians(tool: Tool, packets: int) -> dict:
    wall = statistics.median(r.wall for r in tool.runs)
    cpu = statistics.median(r.cpu for r in tool.runs)
    return {
        "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
        "pps_cpu": round(packets / cpu) if cpu else None, "pps_wall": round(packets / wall),
        "rss_mb": round(statistics.median(r.rss_mb for r in tool.runs), 1),
        "rc": sorted({r.rc for r in tool.runs}), "lost": tool.runs[-1].lost,
        "wrong": None if tool.runs[-1].wrong is None else max(r.wrong or 0 for r in tool.runs),
        "runs": [[round(r.wall, 3), round(r.cpu, 3), round(r.rss_mb, 1)] for r in tool.runs],
    }


# -- captures ----------------------------------------------------------------------------------
def capture(out: Path, name: str, packets: int, sas: int, regen: bool) -> tuple[Path, dict]:
    """The capture `name` at this size, generated unless an identical one is already there."""
    kw = CAPTURES[name]
    path = out / f"{name}-{packets}-{sas}.pcap"
    truth_file = gen.truth_path(path)
    if not regen and path.exists() and truth_file.exists():
        return path, json.loads(truth_file.read_text())
    t0 = time.perf_counter()
    gen.generate(path, packets, sas, **kw)
    print(f"generated {path.name} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path, json.loads(truth_file.read_text())


def bench_capture(name: str, wanted: list[str], a: argparse.Namespace) -> dict:
    sas = a.concentrator_sas if name == "concentrator" else a.sas
    path, truth = capture(a.out, name, a.packets, sas, a.regen)
    print(f"\n== {name}: {path.name}, {truth['packets']} frames, {truth['esp_packets']} ESP, "
          f"{truth['sas']} SAs, load {load()}", flush=True)
    warm(path)
    tools = make_tools(wanted, a.out)
    rounds(tools, path, truth, a.out, a.rounds)
    result = {
        "file": path.name, "truth_lost": truth["lost_total"], "frames": truth["packets"],
        "esp_frames": truth["esp_packets"], "sas": truth["sas"], "load_after": load(),
        "tools": {t.name: medians(t, truth["packets"]) for t in tools},
    }
    for t in ("espmeter", "cfloor"):
        if t in result["tools"]:
            print(f"  {t} lost total = {result['tools'][t]['lost']}, truth = {truth['lost_total']}")
    if "espmeter" in result["tools"]:
        print(f"  espmeter SAs wrong against the truth (worst run) = {result['tools']['espmeter']['wrong']}"
              f" of {truth['sas']}")
    return result


# -- memory and start-up -------------------------------------------------------------------------
def memory(sas: int, modes: list[str]) -> dict:
    """bench/memory.py in a fresh interpreter per mode."""
    out = {}
    for mode in modes:
        proc = subprocess.run([sys.executable, str(BENCH / "memory.py"), "--sas", str(sas), "--mode", mode],
                              capture_output=True, text=True, cwd=ROOT, check=True)
        out[mode] = json.loads(proc.stdout)
    return out


def startup(out: Path, n: int = 7) -> dict:
    """Median wall time of `espmeter read` on a 20-frame file, and of a bare `python -c pass`."""
    tiny = out / "tiny.pcap"
    gen.generate(tiny, 20, 2)
    read = [measure(espmeter_argv(tiny, out), out / "tiny.stdout") for _ in range(n)]
    bare = [measure([sys.executable, "-c", "pass"], out / "bare.stdout") for _ in range(n)]
    return {
        "read_s": round(statistics.median(r.wall for r in read), 3),
        "read_cpu_s": round(statistics.median(r.cpu for r in read), 3),
        "python_s": round(statistics.median(r.wall for r in bare), 3),
        "read_rss_mb": round(statistics.median(r.rss_mb for r in read), 1),
    }


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- report ---------------------------------------------------------------------------------------
def table(results: dict) -> str:
    lines = []
    for name, res in results["captures"].items():
        tools = res["tools"]
        lines.append(f"\n{name}: {res['frames']:,} frames ({res['esp_frames']:,} ESP, {res['sas']} SAs), "
                     f"medians of {results['rounds']} rounds, load after {res['load_after']}")
        lines.append(f"  {'tool':<10} {'wall s':>8} {'cpu s':>8} {'pkt/s cpu':>11} {'pkt/s wall':>11}"
                     f" {'vs argus':>9} {'vs softfl':>9} {'RSS MB':>8}")
        for t, m in tools.items():
            lines.append(f"  {t:<10} {m['wall_s']:8.2f} {m['cpu_s']:8.2f} {fmt(m['pps_cpu']):>11}"
                         f" {fmt(m['pps_wall']):>11} {ratio(m, tools.get('argus')):>9}"
                         f" {ratio(m, tools.get('softflowd')):>9} {m['rss_mb']:8.1f}")
        for t in ("espmeter", "cfloor"):
            if t in tools:
                lines.append(f"  {t} lost total = {tools[t]['lost']}, truth = {res['truth_lost']}")
        if "espmeter" in tools:
            lines.append(f"  espmeter SAs wrong against the truth (packets, loss, one entry each; worst run)"
                         f" = {tools['espmeter']['wrong']} of {res['sas']}")
    return "\n".join(lines)


def fmt(pps: int | None) -> str:
    return "-" if pps is None else f"{pps:,}"


def ratio(m: dict, peer: dict | None) -> str:
    """Speed relative to a peer, by CPU time: 2.0x = twice the peer's packets per CPU second."""
    if peer is None or not m["cpu_s"]:
        return "-"
    return f"{peer['cpu_s'] / m['cpu_s']:.2f}x"


def extras(results: dict) -> str:
    lines = []
    for mode, m in results.get("memory", {}).items():
        lines.append(f"\nmemory ({mode}): {m['bytes_per_sa']} B per tracked SA at {m['tracked']:,} SAs"
                     f" ({m['established']:,} established, {m['paired']:,} paired, {m['evictions']} evicted)")
        lines.extend(f"    {line}" for line in m.get("top", []))
    if s := results.get("startup"):
        lines.append(f"\nstart-up: espmeter read on a 20-frame file {s['read_s']:.3f} s wall "
                     f"({s['read_cpu_s']:.3f} s cpu, {s['read_rss_mb']} MB); bare python {s['python_s']:.3f} s")
    return "\n".join(lines)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "agent": agent_version(),
            "load_start": load()}


def agent_version() -> str:
    """The commit espmeter was measured at, '+dirty' when agent/ has uncommitted changes."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
        return proc.stdout.strip() if proc.returncode == 0 else ""
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "agent") else "")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--sas", type=int, default=2000)
    ap.add_argument("--concentrator-sas", type=int, default=100_000, help="SAs of the concentrator capture")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="200k packets, 1 round, RSS-only memory figure")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ",".join(TOOLS))
    ap.add_argument("--captures", default=",".join(CAPTURES), help="comma-separated subset of " + ",".join(CAPTURES))
    ap.add_argument("--memory-sas", type=int, default=100_000, help="SAs for the bytes-per-SA figure (0: skip)")
    ap.add_argument("--no-startup", action="store_true")
    ap.add_argument("--regen", action="store_true", help="regenerate captures even if present")
    ap.add_argument("--out", type=Path, default=BENCH / "out")
    a = ap.parse_args(argv)
    if a.quick:
        a.packets, a.rounds = 200_000, 1
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    wanted = [t for t in a.tools.split(",") if t]
    results: dict = {"machine": machine(), "packets": a.packets, "rounds": a.rounds, "captures": {}}
    print(f"machine: {results['machine']}")
    for name in (c for c in a.captures.split(",") if c):
        results["captures"][name] = bench_capture(name, wanted, a)
    if a.memory_sas:
        results["memory"] = memory(a.memory_sas, ["rss"] if a.quick else ["rss", "tracemalloc"])
    if not a.no_startup:
        results["startup"] = startup(a.out)
    results["machine"]["load_end"] = load()
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results) + extras(results))
    print(f"\nload average: start {results['machine']['load_start']}, end {results['machine']['load_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
