"""Preprocessing is stated by the compiler's caller (Python, `iotrt compile` options, a sidecar
`MODEL.json`), never looked up by the compiler; bad statements get errors naming their source."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iotrt import models
from iotrt.compiler import compile_model
from iotrt.modelformat import preprocessing
from iotrt.modelformat.artifact import read_meta
from iotrt.modelformat.errors import PreprocessingError
from iotrt.nodes.perception import modelcache

# What artifacts compiled from the shipped BlazeFace recorded before preprocessing was stated
# by the caller (iotrt.models.PREPROCESSING, looked up by the compiler by the model's sha256).
BLAZEFACE_META = {"layout": "NHWC", "color": "RGB", "mean": [127.5, 127.5, 127.5],
                  "std": [127.5, 127.5, 127.5], "input_range": [-1.0, 1.0], "target": "auto"}


def iotrt_compile(*args):
    return subprocess.run([sys.executable, "-m", "iotrt", "compile", "-q", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_shipped_model_compiles_as_before_via_the_cache_and_the_command_line(tmp_path):
    cached = modelcache.compiled_artifact(modelcache.shipped_model(), tmp_path / "cache")
    assert read_meta(cached) == BLAZEFACE_META
    # the command line reads the same sidecar beside the shipped model
    res = iotrt_compile(models.path(models.BLAZEFACE), "-o", tmp_path / "cli.iotm")
    assert res.returncode == 0, res.stderr
    # a copy without its sidecar, the preprocessing stated as options
    bare = shutil.copy(models.path(models.BLAZEFACE), tmp_path / "face.tflite")
    res = iotrt_compile(bare, "-o", tmp_path / "options.iotm", "--color", "RGB", "--mean",
                        "127.5,127.5,127.5", "--std", "127.5,127.5,127.5", "--input-range=-1,1")
    assert res.returncode == 0, res.stderr
    # byte for byte: same model, same metadata, same plan (the source's name is recorded too)
    assert (tmp_path / "cli.iotm").read_bytes() == cached.read_bytes()
    assert read_meta(tmp_path / "options.iotm") == BLAZEFACE_META
    # nothing stated, nothing recorded: the compiler does not know the shipped models
    compile_model(bare, tmp_path / "plain.iotm")
    assert read_meta(tmp_path / "plain.iotm") == {"layout": "NHWC", "target": "auto"}


def test_options_override_the_file_and_python_states_it_directly(tmp_path):
    src = shutil.copy(models.path(models.BLAZEFACE), tmp_path / "face.tflite")
    (tmp_path / "face.tflite.json").write_text(json.dumps({"color": "RGB", "mean": [0, 0, 0]}))
    res = iotrt_compile(src, "-o", tmp_path / "a.iotm", "--color", "BGR")
    assert res.returncode == 0, res.stderr
    assert read_meta(tmp_path / "a.iotm") == {"layout": "NHWC", "color": "BGR",
                                               "mean": [0.0, 0.0, 0.0], "target": "auto"}
    compile_model(src, tmp_path / "b.iotm", preprocessing={"input_range": [0, 1]})
    assert read_meta(tmp_path / "b.iotm") == {"layout": "NHWC", "input_range": [0.0, 1.0],
                                               "target": "auto"}


@pytest.mark.parametrize("value, message", [
    ([1, 2], "must be a mapping"),
    ({"scale": 1.0}, "unknown preprocessing key(s) 'scale' (known: color, mean, std, input_range)"),
    ({"color": "rgb"}, "'color' must be one of RGB, BGR"),
    ({"mean": "127.5"}, "'mean' must be a list of 1 to 64 numbers"),
    ({"mean": []}, "'mean' must be a list"),
    ({"mean": [1.0] * 65}, "'mean' must be a list"),
    ({"mean": [True, 1, 1]}, "'mean' holds True, not a number"),
    ({"mean": [float("nan")]}, "'mean' holds nan, not a finite number"),
    ({"std": [float("inf")]}, "not a finite number"),
    ({"std": [2 ** 1100]}, "not a finite number"),
    ({"std": [1.0, 0.0, 1.0]}, "'std' must not hold 0"),
    ({"mean": [1, 2, 3], "std": [1]}, "'std' must have 3 numbers, not 1"),
    ({"input_range": [1, -1]}, "lo < hi"),
    ({"input_range": [0]}, "'input_range' must have 2 numbers"),
])
def test_bad_values_are_refused_naming_their_source(value, message):
    with pytest.raises(PreprocessingError) as err:
        preprocessing.check(value, "here.json")
    assert str(err.value).startswith("here.json: ") and message in str(err.value)


def test_bad_files_are_refused_naming_the_file(tmp_path):
    cases = {"syntax": '{"color": "RGB",\n "mean": [1,]}', "nan": '{"mean": [NaN]}',
             "deep": "[" * 100_000, "big": " " * (preprocessing.MAX_FILE_BYTES + 1),
             "binary": b"\xff\xfe{"}
    for name, text in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(PreprocessingError, match=rf"^{path}"):
            preprocessing.read(path)
    with pytest.raises(PreprocessingError, match=r"syntax\.json:2:\d+: not JSON"):
        preprocessing.read(tmp_path / "syntax.json")
    with pytest.raises(PreprocessingError, match="cannot read preprocessing"):
        preprocessing.read(tmp_path / "absent.json")


def test_compile_model_and_the_command_line_name_the_bad_input(tmp_path):
    src = shutil.copy(models.path(models.BLAZEFACE), tmp_path / "face.tflite")
    with pytest.raises(PreprocessingError, match=r"compile_model\(preprocessing=...\): unknown"):
        compile_model(src, tmp_path / "x.iotm", preprocessing={"scale": 2})
    bad = tmp_path / "pre.json"
    bad.write_text('{"mean": [1, 2, 3], "std": "x"}')
    res = iotrt_compile(src, "--preprocessing", bad)
    assert res.returncode == 1 and f"{bad}: 'std' must be a list" in res.stderr
    (tmp_path / "face.tflite.json").write_text('{"input_range": [1, 1]}')    # the sidecar
    res = iotrt_compile(src)
    assert res.returncode == 1 and "face.tflite.json: 'input_range'" in res.stderr
    good = tmp_path / "good.json"
    good.write_text('{"mean": [1, 2, 3]}')
    res = iotrt_compile(src, "--preprocessing", good, "--std", "1")
    assert res.returncode == 1 and f"{good} with --color/--mean/--std/--input-range: 'std' must " \
        "have 3 numbers, not 1" in res.stderr
    res = iotrt_compile(src, "--mean", "nan")
    assert res.returncode == 2 and "--mean" in res.stderr and "finite" in res.stderr
    assert not (tmp_path / "face.iotm").exists() and not (tmp_path / "x.iotm").exists()


def test_the_documented_sidecar_is_the_shipped_one():
    text = (Path(__file__).resolve().parents[2] / "docs" / "compile.md").read_text()
    documented = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    assert preprocessing.check(documented, "docs") == preprocessing.of_model(
        models.path(models.BLAZEFACE)) == preprocessing.recorded(BLAZEFACE_META)
