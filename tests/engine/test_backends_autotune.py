"""`auto` backend selection: interleaved timing, correctness gate, cache next to the artifact.

Backends here are fakes that advance a fake clock by a known cost, so every expectation is exact.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

from iotrt.engine import autotune
from iotrt.engine.autotune import Budget


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeBackend:
    """Takes `costs[i % len(costs)]` fake seconds per call and returns `value`."""

    def __init__(self, name, clock, costs, value=1.0, calls=None):
        self.name, self.clock, self.costs, self.value = name, clock, list(costs), value
        self.backend = name
        self.n = 0
        self.calls = calls if calls is not None else []

    def run(self, feeds):
        self.clock.t += self.costs[self.n % len(self.costs)]
        self.n += 1
        self.calls.append(self.name)
        return {"y": np.full((2, 3), self.value, np.float32)}


FAST = Budget(min_rounds=5, max_rounds=9, seconds=0.0, warmup=1)


def runs_of(backends):
    return {b.name: (lambda b=b: b.run(FEEDS)) for b in backends}


def test_fastest_by_median_not_by_mean():
    clock = FakeClock()
    # opencv is usually 2 ms but has one 1 s hiccup; its median still beats numpy's steady 3 ms.
    backends = [
        FakeBackend("numpy", clock, [0.003]),
        FakeBackend("opencv", clock, [0.002, 1.0, 0.002, 0.002, 0.002, 0.002]),
        FakeBackend("onnxruntime", clock, [0.004]),
    ]
    winner, medians, rounds, rejected = autotune.choose(runs_of(backends), FAST, clock)
    assert winner == "opencv"
    assert medians == pytest.approx({"numpy": 3.0, "opencv": 2.0, "onnxruntime": 4.0})
    assert rounds == 5 and rejected == {}


def test_rounds_are_interleaved_and_rotated():
    clock, calls = FakeClock(), []
    backends = [FakeBackend(n, clock, [0.001], calls=calls) for n in ("numpy", "opencv", "onnxruntime")]
    autotune.interleaved_medians(runs_of(backends), Budget(min_rounds=3, max_rounds=3, warmup=0), clock)
    assert calls == [
        "numpy", "opencv", "onnxruntime",
        "opencv", "onnxruntime", "numpy",
        "onnxruntime", "numpy", "opencv",
    ]


def test_time_budget_adds_rounds_up_to_the_cap():
    clock = FakeClock()
    backends = [FakeBackend("numpy", clock, [0.125]), FakeBackend("opencv", clock, [0.125])]
    _, rounds = autotune.interleaved_medians(
        runs_of(backends), Budget(min_rounds=2, max_rounds=50, seconds=1.0, warmup=0), clock
    )
    assert rounds == 4  # 0.25 s per round: no new round starts once 1 s is spent
    _, rounds = autotune.interleaved_medians(
        runs_of(backends), Budget(min_rounds=2, max_rounds=3, seconds=100.0, warmup=0), clock
    )
    assert rounds == 3


def test_a_fast_backend_with_wrong_outputs_is_never_chosen():
    clock = FakeClock()
    backends = [
        FakeBackend("numpy", clock, [0.003]),
        FakeBackend("opencv", clock, [0.001], value=1.01),  # 1e-2 off: e.g. a transposed weight
        FakeBackend("onnxruntime", clock, [0.002], value=1.0 + 1e-5),  # float reordering: fine
    ]
    winner, medians, _, rejected = autotune.choose(runs_of(backends), FAST, clock)
    assert winner == "onnxruntime"
    assert set(medians) == {"numpy", "onnxruntime"}
    assert "opencv" in rejected and "differ" in rejected["opencv"]


def test_the_numpy_reference_is_required():
    clock = FakeClock()
    with pytest.raises(ValueError, match="numpy"):
        autotune.choose(runs_of([FakeBackend("opencv", clock, [0.001])]), FAST, clock)


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "face.iotm"
    path.write_bytes(b"pretend artifact " * 100)
    return path


def make_builder(clock, costs, built):
    def build(name):
        if costs[name] is None:
            raise RuntimeError(f"{name} cannot load this graph")
        built.append(name)
        return FakeBackend(name, clock, [costs[name]])

    return build


FEEDS = {"x": np.zeros((1, 3), np.float32)}


def test_select_measures_once_then_uses_the_cache(artifact, caplog):
    clock, built = FakeClock(), []
    costs = {"numpy": 0.010, "opencv": 0.004, "onnxruntime": None}
    build = make_builder(clock, costs, built)
    with caplog.at_level(logging.DEBUG, logger="iotrt.engine.auto"):
        backend, choice = autotune.select(artifact, list(costs), build, FEEDS, 2, FAST, clock)
    assert backend.name == "opencv" and choice.backend == "opencv"
    assert built == ["numpy", "opencv"]
    assert "onnxruntime" in choice.rejected and "cannot load" in choice.rejected["onnxruntime"]
    # one short sentence on the console; every figure and why a backend is out at DEBUG
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert ("auto chose opencv: 4.00 ms per run (next: numpy 10.00 ms); 1 backend(s) not "
            "usable here") in info
    assert max(len(line) for line in info) <= 120
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("auto chose opencv: opencv 4.00 ms, numpy 10.00 ms" in line
               and "onnxruntime not used" in line for line in debug)

    cache = autotune.cache_path(artifact)
    assert cache.name == "face.iotm.auto.json"
    stored = json.loads(cache.read_text())
    assert stored["backend"] == "opencv" and stored["key"]["threads"] == "2"

    # A later load (a restart of the node) builds only the chosen backend and measures nothing.
    built.clear()
    t_before = clock.t
    backend, again = autotune.select(artifact, list(costs), build, FEEDS, 2, FAST, clock)
    assert backend.name == "opencv" and built == ["opencv"] and clock.t == t_before
    assert again == choice


@pytest.mark.parametrize("change", ["artifact", "threads", "corrupt", "gone"])
def test_select_measures_again_when_the_cache_does_not_apply(artifact, change):
    clock, built = FakeClock(), []
    costs = {"numpy": 0.010, "opencv": 0.004}
    build = make_builder(clock, costs, built)
    autotune.select(artifact, list(costs), build, FEEDS, 1, FAST, clock)
    threads, names = 1, list(costs)
    if change == "artifact":
        artifact.write_bytes(b"recompiled")
    elif change == "threads":
        threads = 2
    elif change == "corrupt":
        autotune.cache_path(artifact).write_text("{not json")
    elif change == "gone":
        names = ["numpy"]  # the cached backend is not installed on this device any more
    built.clear()
    backend, _ = autotune.select(artifact, names, build, FEEDS, threads, FAST, clock)
    assert built[:2] == names[:2]  # every candidate built again: it measured
    assert json.loads(autotune.cache_path(artifact).read_text())["key"]["threads"] == str(threads)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only directory")
def test_unwritable_directory_still_loads_and_warns(artifact, caplog):
    clock, built = FakeClock(), []
    build = make_builder(clock, {"numpy": 0.01, "opencv": 0.02}, built)
    artifact.parent.chmod(0o555)
    try:
        with caplog.at_level(logging.WARNING, logger="iotrt.engine.auto"):
            backend, _ = autotune.select(artifact, ["numpy", "opencv"], build, FEEDS, 1, FAST, clock)
    finally:
        artifact.parent.chmod(0o755)
    assert backend.name == "numpy"
    assert "cannot cache" in caplog.text
    assert not autotune.cache_path(artifact).exists()


def test_unwritable_cache_path_still_loads_and_warns(artifact, caplog):
    # Works as root too: the cache path is a directory, so replacing it fails.
    autotune.cache_path(artifact).mkdir()
    clock, built = FakeClock(), []
    build = make_builder(clock, {"numpy": 0.01, "opencv": 0.02}, built)
    with caplog.at_level(logging.WARNING, logger="iotrt.engine.auto"):
        backend, _ = autotune.select(artifact, ["numpy", "opencv"], build, FEEDS, 1, FAST, clock)
    assert backend.name == "numpy"
    assert "cannot cache" in caplog.text
    assert not list(artifact.parent.glob(".*.tmp"))  # no temporary left behind


def test_random_feeds_follow_the_specs():
    class Spec:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, shape, dtype

    feeds = autotune.random_feeds([Spec("img", (1, 4, 4, 3), "uint8"), Spec("x", (2, 5), "float32")])
    assert feeds["img"].dtype == np.uint8 and feeds["img"].shape == (1, 4, 4, 3)
    assert feeds["x"].dtype == np.float32 and np.abs(feeds["x"]).max() <= 1.0


def test_cached_backend_that_no_longer_loads_is_measured_again(artifact, caplog):
    clock, built = FakeClock(), []
    costs = {"numpy": 0.010, "opencv": 0.004}
    autotune.select(artifact, list(costs), make_builder(clock, costs, built), FEEDS, 1, FAST, clock)
    costs["opencv"] = None  # e.g. OpenCV upgraded to a build without dnn; versions key unchanged
    with caplog.at_level(logging.WARNING, logger="iotrt.engine.auto"):
        backend, choice = autotune.select(
            artifact, list(costs), make_builder(clock, costs, []), FEEDS, 1, FAST, clock
        )
    assert backend.name == "numpy" and "opencv" in choice.rejected
    assert "no longer loads" in caplog.text


def test_artifact_not_from_a_file_is_measured_without_a_cache(tmp_path):
    clock, built = FakeClock(), []
    costs = {"numpy": 0.010, "opencv": 0.004}
    backend, choice = autotune.select(None, list(costs), make_builder(clock, costs, built), FEEDS, 1, FAST, clock)
    assert backend.name == "opencv" and choice.key == {"threads": "1"}
    assert not list(tmp_path.iterdir())


# ---- robust under load: lower quartiles, a clear margin, a re-check after warm-up -------------


def test_lower_quartile_sees_through_load_that_hits_one_backend_more():
    clock = FakeClock()
    # opencv really costs 2 ms, but other programs stretch 3 of its 5 runs to 9 ms; numpy is a
    # steady 3 ms. Medians would keep numpy; the lower quartile finds opencv.
    backends = [FakeBackend("numpy", clock, [0.003]),
                FakeBackend("opencv", clock, [0.002, 0.009, 0.009, 0.002, 0.009])]
    samples = autotune.interleaved_samples(runs_of(backends), Budget(5, 5, 0.0, 0), clock)
    verdict = autotune.judge(samples)
    assert verdict.winner == "opencv"
    assert verdict.medians["opencv"] > verdict.medians["numpy"]
    assert not verdict.clear  # it won only 2 rounds of 5: worth a second look


@pytest.mark.parametrize("faster, switch", [(0.95, False), (0.8, True)])
def test_a_challenger_replaces_the_incumbent_only_by_a_clear_margin(faster, switch):
    samples = {"numpy": [0.010] * 9, "opencv": [0.010 * faster] * 9}
    verdict = autotune.judge(samples, incumbent="numpy")
    assert verdict.winner == ("opencv" if switch else "numpy")
    assert verdict.clear is switch


def test_clear_lead_is_settled_and_never_rechecked(artifact):
    clock = FakeClock()
    costs = {"numpy": 0.010, "opencv": 0.004}
    build = make_builder(clock, costs, [])
    model, choice = autotune.select(artifact, list(costs), build, FEEDS, 1, FAST, clock)
    assert choice.settled and choice.scores_ms == pytest.approx({"numpy": 10.0, "opencv": 4.0})
    started = []
    auto = autotune.AutoModel(model, choice, lambda: started.append(1), recheck_after=2)
    for _ in range(5):
        auto.run(FEEDS)
    assert auto.wait_recheck(5) and started == [] and auto.backend == "opencv"


def test_unsettled_choice_is_rechecked_after_warm_up_and_switches_on_a_clear_lead(artifact, caplog):
    clock = FakeClock()
    # First load on a busy device: opencv and numpy look alike (opencv 3% ahead).
    costs = {"numpy": 0.0100, "opencv": 0.0097}
    model, choice = autotune.select(artifact, list(costs), make_builder(clock, costs, []), FEEDS, 1, FAST, clock)
    assert choice.backend == "opencv" and not choice.settled
    assert not json.loads(autotune.cache_path(artifact).read_text())["settled"]
    # Later (load gone, caches warm) numpy turns out clearly faster.
    later = {"numpy": 0.005, "opencv": 0.0097}
    job = lambda: autotune.recheck(artifact, choice, list(later), make_builder(clock, later, []), FEEDS, FAST, clock)  # noqa: E731
    auto = autotune.AutoModel(model, choice, job, recheck_after=3)
    with caplog.at_level(logging.INFO, logger="iotrt.engine.auto"):
        for _ in range(2):
            auto.run(FEEDS)
        assert auto._thread is None  # still warming up: nothing measured yet
        auto.run(FEEDS)
        assert auto.wait_recheck(10)
    assert auto.backend == "numpy" and auto.choice.settled
    assert "switching from opencv" in caplog.text
    stored = json.loads(autotune.cache_path(artifact).read_text())
    assert stored["backend"] == "numpy" and stored["settled"]
    for _ in range(5):
        auto.run(FEEDS)  # one re-check per process, however long it runs
    assert auto.choice.rounds == FAST.min_rounds


def test_recheck_keeps_the_incumbent_within_the_margin(artifact):
    clock = FakeClock()
    costs = {"numpy": 0.0100, "opencv": 0.0097}
    _, choice = autotune.select(artifact, list(costs), make_builder(clock, costs, []), FEEDS, 1, FAST, clock)
    later = {"numpy": 0.0095, "opencv": 0.0097}  # numpy now 2% ahead: not worth a switch
    new, model = autotune.recheck(artifact, choice, list(later), make_builder(clock, later, []), FEEDS, FAST, clock)
    assert new.backend == "opencv" == model.name and new.settled


class SleepyBackend:
    """Really takes `cost` seconds per run (load_auto times with the real clock)."""

    def __init__(self, name, cost):
        self.backend, self.cost = name, cost
        self.inputs, self.outputs, self.meta = [], [], {}

    def run(self, feeds):
        import time

        time.sleep(self.cost)
        return {"y": np.ones((2, 3), np.float32)}


def test_first_measurement_in_the_background_starts_on_numpy_then_switches(artifact):
    class Art:
        inputs = []

    built = []

    def build(name):
        built.append(name)
        return SleepyBackend(name, {"numpy": 0.004, "opencv": 0.0}[name])

    auto = autotune.load_auto(Art(), artifact, ["numpy", "opencv"], build, 1, background=True)
    assert auto.backend == "numpy" and built[0] == "numpy"  # usable at once, on the reference
    auto.run({})
    assert auto.wait_recheck(30)
    assert auto.backend == "opencv" and auto.choice.settled
    assert json.loads(autotune.cache_path(artifact).read_text())["backend"] == "opencv"
    # the next process finds the cache: no numpy first, nothing measured
    built.clear()
    again = autotune.load_auto(Art(), artifact, ["numpy", "opencv"], build, 1, background=True)
    assert again.backend == "opencv" and built == ["opencv"] and again.wait_recheck(0)


def test_a_program_that_exits_while_measuring_in_the_background_exits_cleanly(tmp_path):
    """A CLI (`iotrt enroll`) or a node stopped during its first seconds: the measuring thread
    stops at its next round instead of being killed inside native code (an abort at exit)."""
    import subprocess
    import sys
    import time

    script = tmp_path / "exits.py"
    script.write_text(
        "import time\n"
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from iotrt.engine import autotune\n"
        "class Slow:\n"
        "    inputs, outputs, meta = [], [], {}\n"
        "    def __init__(self, name): self.backend = name\n"
        "    def run(self, feeds):\n"
        "        time.sleep(0.05)\n"
        "        return {'y': np.ones(2, np.float32)}\n"
        "class Art:\n"
        "    inputs = []\n"
        f"auto = autotune.load_auto(Art(), Path({str(tmp_path / 'm.iotm')!r}), ['numpy', 'opencv'], Slow, 1,\n"
        "                          background=True)\n"
        "assert auto._thread.is_alive()\n"
    )
    (tmp_path / "m.iotm").write_bytes(b"artifact")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - t0 < 30  # and did not hang
    assert not autotune.cache_path(tmp_path / "m.iotm").exists()  # nothing half-measured cached


@pytest.mark.parametrize("dist", ["iotrt", "numpy", "opencv-python-headless", "onnxruntime",
                                  "ai-edge-litert", "no-such-distribution"])
def test_cache_key_versions_match_importlib_metadata(dist):
    """The cache key reads versions without importlib.metadata (it costs a node ~2 MB); it must
    read the same ones, or an upgraded framework would not trigger a new measurement."""
    try:
        expected = metadata.version(dist)
    except metadata.PackageNotFoundError:
        expected = "absent"
    assert autotune._version(dist) == expected


def test_auto_load_imports_no_metadata_parser():
    code = (
        "import sys\n"
        "from iotrt.engine import autotune\n"
        f"autotune.device_key(__import__('pathlib').Path({__file__!r}), 1)\n"
        "print('email' in sys.modules, 'importlib.metadata' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]
