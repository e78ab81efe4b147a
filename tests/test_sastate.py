"""The compiled SA fields (agent/_sastate.c on agent/sastate.h: numbers unboxed) against their Python twin
(agent.tracker._SAFields, the fallback where nothing compiles): the same names, and from every ground-truth
scenario the same record stream and the same `read --json` document, with ESPMETER_PURE_PYTHON set (every
compiled part off, the SA a plain slots object) and without it."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import tracker
from agent.cli import main
from agent.compiled import fastpath, sastate
from tests.conftest import REPO
from tests.gt.scenarios import registry
from tests.test_record_stream import stream


def test_the_compiled_fields_are_the_python_twins() -> None:
    if sastate is None or fastpath is None:
        pytest.fail("the compiled parts are not built (CI builds them)")
    fields = [k for k, v in vars(sastate.SAFields).items()
              if type(v).__name__ in ("member_descriptor", "getset_descriptor")]
    twin = [k for k, v in vars(tracker._SAFields).items() if type(v).__name__ == "member_descriptor"
            or isinstance(v, property)]
    assert sorted(fields) == sorted(twin) == sorted(tracker.FIELDS) and len(set(tracker.FIELDS)) == len(tracker.FIELDS)
    assert tracker.SAFields is sastate.SAFields


def test_sas_are_untracked_and_carry_no_gc_header() -> None:
    """SA and SeqTracker instances have no cyclic-collector header (16 B of each SA, agent/_sastate.c); a
    class made of them by a `class` statement is collected as any, its cycles through the fields included."""
    if sastate is None or fastpath is None:
        pytest.fail("the compiled parts are not built (CI builds them)")
    from agent.sa import SA
    from agent.sakey import sa_key

    key = sa_key(None, bytes(12))
    sa, seq = SA(key, False, 1.0, None), tracker.SeqTracker()
    assert not gc.is_tracked(sa) and not gc.is_tracked(seq)
    assert sys.getsizeof(sa) == sys.getsizeof(seq) == SA.__basicsize__ == sastate.SAFields.__basicsize__
    freed = []

    class Witness:
        def __del__(self) -> None:
            freed.append(True)

    sa.gaps, sa.peer, sa.name, sa.events = [[1, 2]], SA(key, False, 1.0, None), "tunnel", [Witness()]
    del sa
    assert freed == [True]  # what it held went with it

    class Tracked(SA):
        __slots__ = ()

    t, u = Tracked(key, True, 1.0, "in"), Tracked(key, True, 1.0, "out")
    assert gc.is_tracked(t) and sys.getsizeof(t) == SA.__basicsize__ + 16
    t.peer, t.events = t, [Witness()]  # a cycle through a field
    u.events = [u, Witness()]  # and one through the cold block
    del t, u
    gc.collect()
    assert freed == [True] * 3
    for bad in (SA, int):  # once only; not a class of SAFields
        with pytest.raises(TypeError, match="untracked"):
            sastate.untracked(bad)

    class WithDict(sastate.SAFields):
        pass

    with pytest.raises(TypeError, match="untracked"):
        sastate.untracked(WithDict)


def test_a_long_chain_of_generations_is_freed_without_recursion() -> None:
    """A restart leaves the old generation's peer pointing one way at its partner, which restarts too: a
    chain of SAs, freed with its head. Without a GC header SA has no trashcan, so the chain is taken apart
    iteratively (agent/_sastate.c release_peers); freed by recursion, 70 000 overflowed the C stack. In a
    child: a crash is a failure here, not of the whole run."""
    code = """
from agent.sa import SA
from agent.sakey import sa_key
key = sa_key(None, bytes(12))
head = sa = SA(key, False, 1.0, None)
for _ in range(300_000):
    sa.peer = SA(key, False, 1.0, None)
    sa = sa.peer
del sa
head = None
print("freed")
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout == "freed\n", (run.returncode, run.stderr[-500:])


def _outputs(directory: str) -> str:
    """Every scenario's record stream (SA and biflow records, 1 s / 2 s timeouts) and `read --json`
    document, written into `directory`, as one JSON text."""
    out = {}
    for name, make in sorted(registry().items()):
        sc = make()
        cap = str(Path(directory) / f"{name}.{'pcapng' if sc.fmt == 'pcapng' else 'pcap'}")
        sc.write(cap)
        doc = Path(directory) / f"{name}.json"
        with open(doc, "w") as f:
            saved, sys.stdout = sys.stdout, f
            try:
                main(["read", "--json", cap])
            finally:
                sys.stdout = saved
        out[name] = [repr(stream(cap, biflow)) for biflow in (False, True)] + [doc.read_text().replace(directory, "")]
    return json.dumps(out)


def test_pure_python_equals_compiled(tmp_path: Path) -> None:
    if sastate is None or fastpath is None:
        pytest.fail("the compiled parts are not built (CI builds them)")
    code = "import sys\nfrom tests.test_sastate import _outputs\nprint(_outputs(sys.argv[1]))"
    runs = {}
    for pure in ("1", ""):
        (tmp_path / pure).mkdir(exist_ok=True)
        res = subprocess.run([sys.executable, "-c", code, str(tmp_path / pure)], capture_output=True, text=True,
                             cwd=REPO, timeout=600, env={**os.environ, "ESPMETER_PURE_PYTHON": pure})
        assert res.returncode == 0, res.stderr[-2000:]
        runs[pure] = json.loads(res.stdout)
    assert runs["1"].keys() == runs[""].keys() and len(runs[""]) > 20
    for name in runs[""]:
        for i, what in enumerate(("SA records", "biflow records", "read --json")):
            assert runs["1"][name][i] == runs[""][name][i], (name, what)
