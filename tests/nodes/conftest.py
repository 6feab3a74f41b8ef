"""Shared fixtures for the sensing and perception node tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BLAZEFACE = "face_detection_short_range.tflite"


def blazeface_source() -> Path:
    """The vendored BlazeFace model (models/, see models/README.md)."""
    return ROOT / "models" / BLAZEFACE


@pytest.fixture(scope="session")
def blazeface_path() -> Path:
    path = blazeface_source()
    if not path.is_file():
        pytest.fail(f"the vendored BlazeFace model is missing: {path}")
    return path


@pytest.fixture(scope="session")
def litert(blazeface_path):
    """BlazeFace executed by LiteRT: x (1, 128, 128, 3) -> (regressors, classificators)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(str(blazeface_path), num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    outs = {o["name"]: o["index"] for o in interp.get_output_details()}

    def run(x: np.ndarray):
        interp.set_tensor(inp, np.ascontiguousarray(x, np.float32))
        interp.invoke()
        return interp.get_tensor(outs["regressors"]).copy(), interp.get_tensor(outs["classificators"]).copy()

    return run


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


@pytest.fixture(scope="session")
def photo():
    """photo(name): a scikit-image sample photograph as RGB uint8 (grey images expanded)."""
    import skimage.data

    return lambda name: _rgb(getattr(skimage.data, name)())
