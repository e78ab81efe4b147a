"""agent.heap: the heap is trimmed once per burst, when the burst is over, and never in steady traffic."""

from agent.heap import HeapTrim, _malloc_trim


def test_trims_once_when_a_burst_ends() -> None:
    h = HeapTrim(burst=1000)
    trimmed = [h.interval(n) for n in (0, 999, 5000, 1000, 999, 0, 999)]
    assert trimmed == [False, False, False, False, True, False, False]
    assert h.trims == 1


def test_steady_traffic_and_quiet_links_never_trim() -> None:
    busy, quiet = HeapTrim(burst=1000), HeapTrim(burst=1000)
    assert not any(busy.interval(2000) for _ in range(100))
    assert not any(quiet.interval(10) for _ in range(100))
    assert busy.trims == quiet.trims == 0


def test_glibc_malloc_trim_is_called() -> None:
    trim = _malloc_trim()
    assert trim is not None  # this machine and CI run glibc
    junk = [bytes(1 << 20) for _ in range(8)]
    del junk
    assert trim(0) in (0, 1)


def test_batch_copies_come_from_the_heap_without_page_faults() -> None:
    """keep_batches_in_heap: a wake-up's batch copy (megabytes) reuses the heap instead of a fresh mmap
    whose every page faults (in a child process: mallopt changes the whole process)."""
    import subprocess
    import sys

    probe = ("import resource, sys\n"
             "from agent.heap import keep_batches_in_heap\n"
             "if sys.argv[1] == 'heap': assert keep_batches_in_heap()\n"
             "buf = bytes(8 << 20)\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
             "for _ in range(20):  # a wake-up: two batches read, then both freed\n"
             "    first = bytearray(buf); second = bytearray(buf); del first, second\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {mode: int(subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("mmap", "heap")}
    assert faults["mmap"] > 20 * 1000  # 2048 pages each copy, by default
    assert faults["heap"] < faults["mmap"] / 10, faults
