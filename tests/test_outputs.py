"""The output seam: outputs run side by side; a reload keeps, reloads, restarts or stops each one."""

from __future__ import annotations

from agent.outputs import Outputs, OutputSpec
from exporter.records import MeteringStats


class Recorder:
    """An output that writes down every call (the seam's contract, nothing else)."""

    def __init__(self, name: str, calls: list) -> None:
        self.name = name
        self.calls = calls
        self.counters = {f"test://{name}": name}

    def __getattr__(self, method: str):
        return lambda *args: self.calls.append((self.name, method, *args))


def test_fan_out_and_reconfigure() -> None:
    calls: list = []
    outputs = Outputs([OutputSpec("a", 1, lambda: Recorder("a1", calls)),
                       OutputSpec("b", 1, lambda: Recorder("b1", calls))])
    stats = MeteringStats(observation_domain=1)
    outputs.export(["r"])
    outputs.export_stats(stats)
    outputs.export_loss_events(["e"])
    outputs.tick()
    assert calls == [("a1", "export", ["r"]), ("b1", "export", ["r"]), ("a1", "export_stats", stats),
                     ("b1", "export_stats", stats), ("a1", "export_loss_events", ["e"]),
                     ("b1", "export_loss_events", ["e"]), ("a1", "tick"), ("b1", "tick")]
    assert outputs.counters == {"test://a1": "a1", "test://b1": "b1"}
    calls.clear()
    # a: same settings (reloaded in place); b: gone (closed); c: new (started)
    outputs.configure([OutputSpec("a", 1, lambda: Recorder("a2", calls)),
                       OutputSpec("c", 1, lambda: Recorder("c1", calls))])
    assert calls == [("b1", "close"), ("a1", "reload")]
    calls.clear()
    outputs.configure([OutputSpec("a", 2, lambda: Recorder("a3", calls)),
                       OutputSpec("c", 1, lambda: Recorder("c2", calls))])  # a's settings changed
    assert calls == [("a1", "close"), ("c1", "reload")]
    calls.clear()
    outputs.close()
    assert calls == [("c1", "close"), ("a3", "close")]  # a restarted output runs after the others
    assert outputs.outputs == []
