"""Thread budgets are fixed per process, never "all cores"."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_info

from iotrt import models
from iotrt.compiler import compile_model
from iotrt.engine import load
from iotrt.engine.backend import default_threads


@pytest.mark.parametrize(
    "env,expected",
    [({}, 1), ({"OMP_NUM_THREADS": "3"}, 3), ({"IOTRT_THREADS": "2", "OMP_NUM_THREADS": "4"}, 2),
     ({"IOTRT_THREADS": "zero", "OMP_NUM_THREADS": "0"}, 1)],
)
def test_default_threads_come_from_the_environment(monkeypatch, env, expected):
    for var in ("IOTRT_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert default_threads() == expected


def test_numpy_backend_fixes_the_blas_pool(tmp_path):
    art = tmp_path / "face.iotm"
    compile_model(models.path(models.BLAZEFACE), art)
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    before = {p["filepath"]: p["num_threads"] for p in blas}
    from threadpoolctl import threadpool_limits

    try:
        threadpool_limits(limits=2, user_api="blas")  # what OpenBLAS picks on a 2-core board
        load(art, backend="numpy", threads=1)
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    finally:
        for p in blas:  # give the rest of the test session its pool back
            threadpool_limits(limits=before[p["filepath"]], user_api="blas")
