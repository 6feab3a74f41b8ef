"""Backend `auto`: measure the backends on this device, keep the fastest, remember it.

The machine that compiles a model is not the device that runs it, so the choice is made where
the artifact is loaded: the first `load(path, backend="auto")` builds every available backend,
checks that each one's outputs agree with the numpy reference (a backend that answers wrongly is
never chosen, however fast), times them in *interleaved* rounds (one run of each backend per
round, in rotating order, so that background load or a CPU clock change hits every backend alike)
and keeps the one with the lowest *lower quartile*: on a busy device other programs only ever
add time to a run, so the fast quarter of the samples is what the backend itself costs (the
median is logged too). The figures are logged and the choice is written next to the artifact
(`face.iotm` -> `face.iotm.auto.json`), keyed by the artifact's sha256, the device and the
library versions; later loads read it and build only the chosen backend.

A choice is *settled* when the winner beat the runner-up by a clear margin (`MARGIN`) in its
lower quartile and in most of the rounds they shared. An unsettled choice (two backends close,
or a measurement swamped by load) is used at once on later loads too, but the model re-checks it
once in a background thread after it has warmed up (`RECHECK_AFTER_RUNS` runs): the incumbent
against the other candidates, on fresh instances so the node's own runs are not disturbed. It
switches only when a challenger wins by the clear margin, and caches the result as settled.

Nodes measure in a separate process (`load(..., measure_in_background=True)` on an artifact
file): a fresh `python -m iotrt.engine.autotune ARTIFACT` builds and times every candidate,
caches the choice and prints it, while the node keeps running on numpy; the node then builds
only the winner. So a node process imports the one framework it runs (a perception process
that imported onnxruntime, LiteRT and cv2.dnn only to time them kept ~35 MB of them for
good), and a crash in a framework's native code while measuring costs a measurement, not the
node. The measuring process stops at its next round when the node is gone.

Everything runs with the thread count the caller fixed: a choice measured with 4 threads says
nothing about a node that gets 1 core.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from iotrt import errors
from iotrt.engine.backend import BACKENDS, load_backend
from iotrt.hashing import file_sha256
from iotrt.modelformat.artifact import read

log = logging.getLogger("iotrt.engine.auto")

CACHE_SUFFIX = ".auto.json"
CACHE_VERSION = 2
REFERENCE = "numpy"
# A challenger must be this much faster (lower quartile) and win this share of the rounds it
# shares with the incumbent before `auto` prefers it; within the margin the choice stays open.
MARGIN = 0.10
ROUND_WINS = 0.75
RECHECK_AFTER_RUNS = 50
# Outputs of a candidate may differ from the numpy reference by this much (absolute, after scaling
# by max(1, |reference|)): float32 summation order differs between engines, wrong weights do not.
AGREEMENT_TOL = 1e-3
# The measuring process: building every backend and ~4 s of timing; a hung framework is killed.
CHILD_TIMEOUT_S = 300.0
CHILD_LOG_LINES = 40  # its last log lines are logged here


@dataclass(frozen=True)
class Budget:
    """How long first-load autotuning may take: at least `min_rounds` interleaved rounds, more
    while within `seconds`, never more than `max_rounds`."""

    min_rounds: int = 5
    max_rounds: int = 31
    seconds: float = 4.0
    warmup: int = 2


@dataclass(frozen=True)
class Choice:
    backend: str
    medians_ms: dict[str, float]  # every candidate that was timed
    rounds: int
    rejected: dict[str, str]  # backend -> why it was not a candidate
    key: dict[str, str]  # what the choice is valid for (artifact, device, versions, threads)
    scores_ms: dict[str, float] = field(default_factory=dict)  # lower quartiles: what decided
    settled: bool = True  # False: the winner's lead was not clear; re-checked after warm-up


Runner = Callable[[], object]


class Cancelled(Exception):
    """A background measurement stopped because the program is exiting (control flow within
    this module, never reported to a user: not part of the `iotrt.errors` family)."""


class MeasureError(errors.ModelError, RuntimeError):
    """The measuring process failed, hung or printed no choice; the message says which."""


_background = threading.local()  # .cancel: set in the background measuring thread only


def _check_cancelled() -> None:
    cancel = getattr(_background, "cancel", None)
    if cancel is not None and cancel():
        raise Cancelled


def interleaved_samples(
    runners: Mapping[str, Runner],
    budget: Budget = Budget(),
    clock: Callable[[], float] = time.perf_counter,
    on_round: Callable[[int, float], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each runner, timed in rotating interleaved rounds.

    `on_round(rounds done, seconds spent)` is called after each round (progress output).
    """
    names = list(runners)
    for name in names:
        _check_cancelled()
        for _ in range(budget.warmup):
            runners[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    start = clock()
    rounds = 0
    while rounds < budget.max_rounds and (
        rounds < budget.min_rounds or clock() - start < budget.seconds
    ):
        _check_cancelled()
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = clock()
            runners[name]()
            samples[name].append(clock() - t0)
        rounds += 1
        if on_round is not None:
            on_round(rounds, clock() - start)
    return samples


def interleaved_medians(
    runners: Mapping[str, Runner],
    budget: Budget = Budget(),
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, float], int]:
    """Median seconds per call of each runner, and the number of rounds timed."""
    samples = interleaved_samples(runners, budget, clock)
    rounds = len(next(iter(samples.values()), []))
    return {n: float(np.median(s)) for n, s in samples.items()}, rounds


def disagreement(reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> float:
    """Largest scaled absolute difference between two backends' outputs (inf if they mismatch)."""
    worst = 0.0
    for name, ref in reference.items():
        got = outputs.get(name)
        if got is None or np.shape(got) != np.shape(ref):
            return float("inf")
        ref64 = np.asarray(ref, np.float64)
        err = np.abs(np.asarray(got, np.float64) - ref64) / np.maximum(1.0, np.abs(ref64))
        worst = max(worst, float(err.max(initial=0.0)))
    return worst


def lower_quartile(samples: list[float]) -> float:
    return float(np.percentile(samples, 25))


@dataclass(frozen=True)
class Verdict:
    """What interleaved samples say: the winner, and whether its lead over the others is clear."""

    winner: str
    scores: dict[str, float]  # lower quartile per backend, seconds
    medians: dict[str, float]
    clear: bool


def judge(samples: Mapping[str, list[float]], incumbent: str | None = None) -> Verdict:
    """Rank interleaved samples by lower quartile. With an `incumbent`, a challenger takes its
    place only with a clear lead: `MARGIN` faster and faster in `ROUND_WINS` of the rounds."""
    scores = {n: lower_quartile(s) for n, s in samples.items()}
    medians = {n: float(np.median(s)) for n, s in samples.items()}

    def leads(a: str, b: str) -> bool:
        wins = sum(x < y for x, y in zip(samples[a], samples[b]))
        return scores[a] <= (1 - MARGIN) * scores[b] and wins >= ROUND_WINS * len(samples[a])

    best = min(scores, key=scores.__getitem__)
    if incumbent is None or incumbent not in samples:
        others = [n for n in samples if n != best]
        return Verdict(best, scores, medians, all(leads(best, n) for n in others))
    if best != incumbent and leads(best, incumbent):
        return Verdict(best, scores, medians, True)
    return Verdict(incumbent, scores, medians, False)


def choose(
    runs: Mapping[str, Callable[[], Mapping[str, np.ndarray]]],
    budget: Budget = Budget(),
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[str, dict[str, float], int, dict[str, str]]:
    """Pick the fastest of `runs` whose outputs agree with `runs[REFERENCE]`.

    Returns (winner, median ms per timed backend, rounds, rejected backend -> reason).
    """
    verdict, rounds, rejected = measure(runs, budget, clock)
    return verdict.winner, {n: s * 1e3 for n, s in verdict.medians.items()}, rounds, rejected


def measure(
    runs: Mapping[str, Callable[[], Mapping[str, np.ndarray]]],
    budget: Budget = Budget(),
    clock: Callable[[], float] = time.perf_counter,
    incumbent: str | None = None,
) -> tuple[Verdict, int, dict[str, str]]:
    """Check every run against the reference, time the agreeing ones interleaved, judge them."""
    if REFERENCE not in runs:
        raise ValueError(f"autotune needs the {REFERENCE!r} backend as the reference")
    reference = runs[REFERENCE]()
    candidates: dict[str, Runner] = {REFERENCE: runs[REFERENCE]}
    rejected: dict[str, str] = {}
    for name, run in runs.items():
        if name == REFERENCE:
            continue
        err = disagreement(reference, run())
        if err > AGREEMENT_TOL:
            rejected[name] = f"outputs differ from {REFERENCE} by {err:.3g} (> {AGREEMENT_TOL})"
        else:
            candidates[name] = run
    samples = interleaved_samples(candidates, budget, clock)
    rounds = len(next(iter(samples.values()), []))
    return judge(samples, incumbent), rounds, rejected


# ---- the cache next to the artifact ----------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() below is the best there is
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    """The installed version of distribution `dist`, from the name of its `NAME-VERSION.dist-info`
    folder on sys.path (the names the packaging standard gives them). importlib.metadata reads
    the same folders, but imports the email parser and zipfile with them: ~2 MB more PSS in
    every node process that loads a model with "auto"."""
    want = _normalized(dist)
    for folder in sys.path:
        try:
            names = os.listdir(folder or ".")
        except OSError:  # a zip file, a folder that is gone
            continue
        for name in names:
            if name.endswith(".dist-info"):
                project, _, version = name[: -len(".dist-info")].partition("-")
                if version and _normalized(project) == want:
                    return version
    return "absent"


def _normalized(project: str) -> str:
    return re.sub(r"[-_.]+", "_", project).lower()


def device_key(artifact: Path, threads: int) -> dict[str, str]:
    """What a cached choice depends on: the exact artifact, this CPU, the thread budget and the
    versions of everything a backend runs on. Any change means measuring again."""
    return {
        "artifact_sha256": file_sha256(artifact),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": str(os.cpu_count()),
        "threads": str(threads),
        "iotrt": _version("iotrt"),
        "numpy": np.__version__,
        "opencv": _version("opencv-python-headless"),
        "onnxruntime": _version("onnxruntime"),
        "litert": _version("ai-edge-litert"),
    }


def cache_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + CACHE_SUFFIX)


def read_cache(artifact: Path, key: dict[str, str]) -> Choice | None:
    """The cached choice for this artifact on this device, or None (absent, stale or unreadable)."""
    path = cache_path(artifact)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable autotune cache %s (%s); measuring again", path, exc)
        return None
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return None
    if data.get("key") != key:
        changed = sorted(k for k in key if (data.get("key") or {}).get(k) != key[k])
        log.info("autotune cache %s is stale (%s changed); measuring again", path, ", ".join(changed))
        return None
    try:
        return Choice(**{k: data[k] for k in ("backend", "medians_ms", "rounds", "rejected", "key",
                                              "scores_ms", "settled")})
    except (KeyError, TypeError):
        return None


def write_cache(artifact: Path, choice: Choice) -> Path | None:
    """Write the choice atomically next to the artifact; None (with a warning) if it can't be."""
    path = cache_path(artifact)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"version": CACHE_VERSION, **asdict(choice)}, indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning(
            "cannot cache the autotune choice next to %s (%s): every load will measure again",
            artifact, exc,
        )
        return None
    return path


def summary(choice: Choice) -> str:
    """One short sentence for the console; `describe` has every figure (logged at DEBUG)."""
    ranked = sorted(choice.medians_ms.items(), key=lambda kv: kv[1])
    text = f"auto chose {choice.backend}: {choice.medians_ms.get(choice.backend, 0.0):.2f} ms per run"
    others = [(n, ms) for n, ms in ranked if n != choice.backend]
    if others:
        text += f" (next: {others[0][0]} {others[0][1]:.2f} ms)"
    if choice.rejected:
        text += f"; {len(choice.rejected)} backend(s) not usable here"
    return text + ("" if choice.settled else "; re-checked after warm-up")


def describe(choice: Choice) -> str:
    figures = ", ".join(f"{n} {ms:.2f} ms" for n, ms in sorted(choice.medians_ms.items(), key=lambda kv: kv[1]))
    text = f"auto chose {choice.backend}: {figures} (medians of {choice.rounds} interleaved rounds"
    text += f", {choice.key.get('threads', '?')} thread(s)"
    if choice.scores_ms:
        quartiles = ", ".join(f"{n} {ms:.2f}" for n, ms in sorted(choice.scores_ms.items(), key=lambda kv: kv[1]))
        text += f"; lower quartiles {quartiles} ms"
    text += ")" if choice.settled else "; no clear lead: re-checked after warm-up)"
    for name, why in choice.rejected.items():
        text += f"; {name} not used: {why}"
    return text


def random_feeds(specs, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs to time with: uniform in [-1, 1] (or over the integer range) for each input spec."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            feeds[spec.name] = rng.integers(max(info.min, -128), min(info.max, 255), spec.shape, dtype)
        else:
            feeds[spec.name] = rng.uniform(-1.0, 1.0, spec.shape).astype(dtype)
    return feeds


def select(
    artifact: Path | None,
    names: list[str],
    build: Callable[[str], object],
    feeds: Mapping[str, np.ndarray],
    threads: int,
    budget: Budget = Budget(),
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[object, Choice]:
    """Build and return the backend `auto` means for the artifact at path `artifact`.

    `names` are the registered backends (the numpy reference among them); `build(name)` makes
    one and may raise, which leaves that backend out with the reason logged. Uses the cached
    choice when it is valid, otherwise measures and caches (no caching when `artifact` is None,
    i.e. an artifact that was not loaded from a file).
    """
    key = device_key(artifact, threads) if artifact is not None else {"threads": str(threads)}
    found = cached(artifact, key, names, build)
    if found is not None:
        return found
    return first_choice(artifact, key, names, build, feeds, budget, clock)


def cached(artifact: Path | None, key: dict[str, str], names: list[str],
           build: Callable[[str], object]) -> tuple[object, Choice] | None:
    """(model, choice) from a valid cache whose backend still loads, else None."""
    choice = read_cache(artifact, key) if artifact is not None else None
    if choice is None or choice.backend not in names:
        return None
    try:
        model = build(choice.backend)
    except Exception as exc:  # noqa: BLE001  e.g. its package was removed: measure again
        log.warning("auto: cached choice %s no longer loads (%s); measuring again", choice.backend, exc)
        return None
    log.info("auto: %s (cached in %s)", choice.backend, cache_path(artifact))
    return model, choice


def first_choice(artifact: Path | None, key: dict[str, str], names: list[str],
                 build: Callable[[str], object], feeds: Mapping[str, np.ndarray],
                 budget: Budget = Budget(), clock: Callable[[], float] = time.perf_counter,
                 ) -> tuple[object, Choice]:
    """Build every backend, measure, cache the choice; returns (chosen model, choice)."""
    built, rejected = build_all(names, build)
    runs = {name: (lambda b=b: b.run(feeds)) for name, b in built.items()}
    verdict, rounds, wrong = measure(runs, budget, clock)
    choice = Choice(verdict.winner, _ms(verdict.medians), rounds, {**rejected, **wrong}, key,
                    _ms(verdict.scores), verdict.clear)
    log.info(summary(choice))
    log.debug(describe(choice))
    if artifact is not None:
        where = write_cache(artifact, choice)
        if where is not None:
            log.debug("auto: choice cached in %s", where)
    return built[choice.backend], choice


def _ms(seconds: Mapping[str, float]) -> dict[str, float]:
    return {n: s * 1e3 for n, s in seconds.items()}


def build_all(names: list[str], build: Callable[[str], object]) -> tuple[dict[str, object], dict[str, str]]:
    """Every backend that builds, and why the others did not (the reference must build)."""
    built: dict[str, object] = {}
    rejected: dict[str, str] = {}
    for name in names:
        _check_cancelled()
        try:
            built[name] = build(name)
        except Exception as exc:  # any backend failure just removes a candidate
            if name == REFERENCE:
                raise
            rejected[name] = f"failed to load: {type(exc).__name__}: {exc}"
    return built, rejected


def recheck(
    artifact: Path | None,
    choice: Choice,
    names: list[str],
    build: Callable[[str], object],
    feeds: Mapping[str, np.ndarray],
    budget: Budget = Budget(),
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[Choice, object]:
    """Measure an unsettled choice again, the incumbent against the other candidates, on fresh
    instances. Returns the settled choice (also cached: a challenger wins only by a clear
    margin) and a fresh model of its backend."""
    built, rejected = build_all(names, build)
    runs = {name: (lambda b=b: b.run(feeds)) for name, b in built.items()}
    verdict, rounds, wrong = measure(runs, budget, clock, incumbent=choice.backend)
    new = replace(choice, backend=verdict.winner, medians_ms=_ms(verdict.medians), rounds=rounds,
                  rejected={**rejected, **wrong}, scores_ms=_ms(verdict.scores), settled=True)
    verb = "switching from" if new.backend != choice.backend else "keeping"
    log.info("auto re-check: %s %s; %s", verb, choice.backend, summary(new))
    log.debug(describe(new))
    if artifact is not None:
        write_cache(artifact, new)
    return new, built[new.backend]


Job = Callable[[], tuple[Choice, object | None]]


class AutoModel:
    """What `load(..., backend="auto")` returns: runs the chosen backend's model. When the
    choice is unsettled it re-checks once, in the background, after `recheck_after` runs, and
    from then on runs the re-check's winner (swapped between two calls, never during one).

    A job returns (choice, a model of its backend) when it measured in this process, or
    (choice, None) when another process measured: then `build(choice.backend)` makes the model
    in the caller's thread, at the next `run` (or `wait_recheck`). `isolated`: the jobs only
    wait for another process, so their thread may be a daemon.
    """

    def __init__(self, model, choice: Choice, recheck_job: Job | None,
                 recheck_after: int = RECHECK_AFTER_RUNS,
                 build: Callable[[str], object] | None = None, isolated: bool = False):
        self._model = model
        self.choice = choice
        self._job = None if choice.settled else recheck_job
        self._countdown = recheck_after
        self._thread: threading.Thread | None = None
        self._build = build
        self._pending: Choice | None = None  # another process's winner, not built yet
        self._isolated = isolated

    @property
    def backend(self) -> str:
        return self._model.backend

    @property
    def inputs(self):
        return self._model.inputs

    @property
    def outputs(self):
        return self._model.outputs

    @property
    def meta(self):
        return self._model.meta

    def run(self, feeds):
        if self._pending is not None:
            self._adopt()
        if self._job is not None:
            self._countdown -= 1
            if self._countdown <= 0:
                self.start(self._job)
        return self._model.run(feeds)

    def start(self, job: Job) -> None:
        """Run `job` in the background now. In-process measuring is not a daemon: one killed at
        exit inside a framework's native code aborts the process ("terminate called without an
        active exception"); it stops by itself instead, at its next backend or round, once the
        main thread has ended. A job that only waits for another process is a daemon."""
        self._job = None
        self._thread = threading.Thread(target=self._recheck, args=(job,), name="iotrt-auto-recheck",
                                        daemon=self._isolated)
        self._thread.start()

    def _recheck(self, job: Job) -> None:
        main = threading.main_thread()
        _background.cancel = lambda: not main.is_alive()
        try:
            choice, model = job()
        except Cancelled:
            log.info("auto: measurement stopped, the program is exiting; %s stays", self.choice.backend)
            return
        except Exception:  # a failed re-check keeps the working choice
            log.exception("auto re-check failed; keeping %s", self.choice.backend)
            return
        if choice.backend != self._model.backend:
            if model is None:
                self._pending = choice  # built by the model's own thread, between two runs
                return
            self._model = model  # one attribute store: the next run() uses it
        self.choice = choice

    def _adopt(self) -> None:
        choice, self._pending = self._pending, None
        try:
            self._model = self._build(choice.backend)
        except Exception:  # e.g. its framework fails here: keep the working model
            log.exception("auto: cannot load the measured winner %s; keeping %s", choice.backend,
                          self._model.backend)
            return
        self.choice = choice
        log.info("auto: switched to %s", choice.backend)

    def wait_recheck(self, timeout: float | None = None) -> bool:
        """Block until a started re-check is done and its winner is in use (tests, benchmarks);
        True if none is running. Call it from the thread that runs the model."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        if self._pending is not None:
            self._adopt()
        return True


# ---- measuring in a separate process ---------------------------------------------------------

_children: set[subprocess.Popen] = set()


@atexit.register
def _stop_children() -> None:
    for proc in list(_children):
        proc.kill()


def measure_in_child(artifact: Path, threads: int, recheck: bool = False,
                     timeout: float = CHILD_TIMEOUT_S) -> Choice:
    """Measure in a fresh process (`python -m iotrt.engine.autotune`), which imports every
    candidate framework, caches its choice next to the artifact and prints it; this process
    imports none of them. `recheck`: re-check the cached unsettled choice instead."""
    cmd = [sys.executable, "-m", "iotrt.engine.autotune", str(artifact), "--threads", str(threads)]
    if recheck:
        cmd.append("--recheck")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _children.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise MeasureError(f"measuring {artifact.name} took over {timeout:g} s; killed") from None
    finally:
        _children.discard(proc)
    for line in err.splitlines()[-CHILD_LOG_LINES:]:
        log.info("(measuring process %d) %s", proc.pid, line)
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise MeasureError(f"measuring process for {artifact.name} exited {proc.returncode}: {last}")
    try:
        data = json.loads(lines[-1])
        return Choice(**{k: data[k] for k in ("backend", "medians_ms", "rounds", "rejected", "key",
                                              "scores_ms", "settled")})
    except (ValueError, KeyError, TypeError) as exc:
        raise MeasureError(f"measuring process for {artifact.name} printed no choice: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m iotrt.engine.autotune ARTIFACT --threads N [--recheck]`: measure, cache, and
    print the choice as one JSON line (logs go to stderr)."""
    p = argparse.ArgumentParser(prog="python -m iotrt.engine.autotune", description=main.__doc__)
    p.add_argument("artifact", type=Path)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--recheck", action="store_true", help="re-check the cached unsettled choice")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    parent = os.getppid()
    _background.cancel = lambda: os.getppid() != parent  # the node is gone: stop measuring
    art = read(args.artifact)
    names = list(BACKENDS)

    def build(name: str):
        return load_backend(art, name, args.threads)

    feeds = random_feeds(art.inputs)
    key = device_key(args.artifact, args.threads)
    old = read_cache(args.artifact, key) if args.recheck else None
    try:
        if old is None:
            _, choice = first_choice(args.artifact, key, names, build, feeds)
        elif not old.settled:
            choice, _ = recheck(args.artifact, old, names, build, feeds)
        else:
            choice = old  # settled meanwhile (another process measured): nothing to do
    except Cancelled:
        log.info("the process that asked for this measurement is gone; stopping")
        return 3
    print(json.dumps(asdict(choice)), flush=True)
    return 0


def load_auto(art, path: Path | None, names: list[str], build: Callable[[str], object], threads: int,
              background: bool = False, isolate: bool = False):
    """`iotrt.engine.load(..., backend="auto")`: the model on this device's fastest backend.

    With `background` and no cached choice yet, the model starts on the numpy reference at once
    and the first measurement runs in the background, switching to its winner when done: a
    node's first result does not wait for every backend to load and be timed. With `isolate`
    (and an artifact file) every measurement, first or re-check, runs in a separate process
    (`measure_in_child`), so this one loads only the winner.
    """
    key = device_key(path, threads) if path is not None else {"threads": str(threads)}
    isolate = isolate and path is not None
    # Timing inputs only where this process measures: numpy.random brings `secrets` and
    # OpenSSL (~1.5 MB), which a node that measures in a child process never needs.
    feeds = None if isolate and background else random_feeds(art.inputs)

    def again(choice: Choice) -> Job:
        if isolate:
            return lambda: (measure_in_child(path, threads, recheck=True), None)
        return lambda: recheck(path, choice, names, build, feeds)

    found = cached(path, key, names, build)
    if found is not None:
        model, choice = found
        return AutoModel(model, choice, again(choice), build=build, isolated=isolate)
    if not background:
        model, choice = first_choice(path, key, names, build, feeds)
        return AutoModel(model, choice, again(choice), build=build, isolated=isolate)
    provisional = Choice(REFERENCE, {}, 0, {}, key, {}, settled=False)
    auto = AutoModel(build(REFERENCE), provisional, None, build=build, isolated=isolate)

    def measure_first() -> tuple[Choice, object | None]:
        if isolate:
            return measure_in_child(path, threads), None
        model, choice = first_choice(path, key, names, build, feeds)
        return choice, model

    auto.start(measure_first)
    return auto


if __name__ == "__main__":
    from iotrt.engine.autotune import main as _main  # the package's module, not a second copy

    sys.exit(_main())
