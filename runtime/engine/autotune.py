"""Backend `auto`: measure the backends on this device once, keep the fastest, remember it.

The machine that compiles a model is not the device that runs it, so the choice is made where
the artifact is loaded: the first `load(path, backend="auto")` builds every available backend,
checks that each one's outputs agree with the numpy reference (a backend that answers wrongly is
never chosen, however fast), times them in *interleaved* rounds (one run of each backend per
round, in rotating order, so that background load or a CPU clock change hits every backend alike)
and keeps the one with the lowest median. The figures are logged and the choice is written next
to the artifact (`face.iotm` -> `face.iotm.auto.json`), keyed by the artifact's sha256, the
device and the library versions; later loads read it and build only the chosen backend.

Everything runs with the thread count the caller fixed: a choice measured with 4 threads says
nothing about a node that gets 1 core.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from iotrt.hashing import file_sha256

log = logging.getLogger("iotrt.engine.auto")

CACHE_SUFFIX = ".auto.json"
CACHE_VERSION = 1
REFERENCE = "numpy"
# Outputs of a candidate may differ from the numpy reference by this much (absolute, after scaling
# by max(1, |reference|)): float32 summation order differs between engines, wrong weights do not.
AGREEMENT_TOL = 1e-3


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


Runner = Callable[[], object]


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
        for _ in range(budget.warmup):
            runners[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    start = clock()
    rounds = 0
    while rounds < budget.max_rounds and (
        rounds < budget.min_rounds or clock() - start < budget.seconds
    ):
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


def choose(
    runs: Mapping[str, Callable[[], Mapping[str, np.ndarray]]],
    budget: Budget = Budget(),
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[str, dict[str, float], int, dict[str, str]]:
    """Pick the fastest of `runs` whose outputs agree with `runs[REFERENCE]`.

    Returns (winner, median ms per timed backend, rounds, rejected backend -> reason).
    """
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
    medians, rounds = interleaved_medians(candidates, budget, clock)
    medians_ms = {n: s * 1e3 for n, s in medians.items()}
    winner = min(medians_ms, key=medians_ms.__getitem__)
    return winner, medians_ms, rounds, rejected


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
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


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
        return Choice(**{k: data[k] for k in ("backend", "medians_ms", "rounds", "rejected", "key")})
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
        )  # fmt: skip
        return None
    return path


def describe(choice: Choice) -> str:
    figures = ", ".join(f"{n} {ms:.2f} ms" for n, ms in sorted(choice.medians_ms.items(), key=lambda kv: kv[1]))
    text = f"auto chose {choice.backend}: {figures} (medians of {choice.rounds} interleaved rounds"
    text += f", {choice.key.get('threads', '?')} thread(s))"
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
    cached = read_cache(artifact, key) if artifact is not None else None
    if cached is not None and cached.backend in names:
        try:
            model = build(cached.backend)
        except Exception as exc:  # noqa: BLE001  e.g. its package was removed: measure again
            log.warning("auto: cached choice %s no longer loads (%s); measuring again", cached.backend, exc)
        else:
            log.info("auto: %s (cached in %s)", cached.backend, cache_path(artifact))
            return model, cached
    built: dict[str, object] = {}
    rejected: dict[str, str] = {}
    for name in names:
        try:
            built[name] = build(name)
        except Exception as exc:  # noqa: BLE001  any backend failure just removes a candidate
            if name == REFERENCE:
                raise
            rejected[name] = f"failed to load: {type(exc).__name__}: {exc}"
    runs = {name: (lambda b=b: b.run(feeds)) for name, b in built.items()}
    winner, medians_ms, rounds, wrong = choose(runs, budget, clock)
    choice = Choice(winner, medians_ms, rounds, {**rejected, **wrong}, key)
    log.info(describe(choice))
    if artifact is not None:
        where = write_cache(artifact, choice)
        if where is not None:
            log.info("auto: choice cached in %s", where)
    return built[winner], choice


def load_auto(art, path: Path | None, names: list[str], build: Callable[[str], object], threads: int):
    """`iotrt.engine.load(..., backend="auto")`: the model on this device's fastest backend."""
    model, _ = select(path, names, build, random_feeds(art.inputs), threads)
    return model
