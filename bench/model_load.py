"""Memory of a process that loads a compiled model, without and with the compiler imported.

    python bench/model_load.py [--runs 5] [--backend numpy]

A device that finds its artifact cached needs the model format and the engine only
(`iotrt.modelformat`, `iotrt.engine`). Each run starts fresh interpreters that compile nothing:
they import the perception node's modules, load the shipped BlazeFace artifact through the model
cache (as the detector does) and read their PSS and RSS from /proc/self/smaps_rollup. The
reference, measured in the same run, is the same process that also imports `iotrt.compiler`
(what every such process carried while the engine imported the compiler). Target: loading
imports no `iotrt.compiler` module, so it costs no compiler memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys
from pathlib import Path
from iotrt.nodes.perception import inference, modelcache
if {with_compiler}:
    import iotrt.compiler
model, _ = modelcache.load_model({artifact!r}, Path({cache!r}), backend={backend!r})
r = {{}}
for line in open("/proc/self/smaps_rollup"):
    parts = line.split()
    if len(parts) >= 2 and parts[1].isdigit():
        r[parts[0].rstrip(":")] = int(parts[1])
compiler = [m for m in sys.modules if m.startswith("iotrt.compiler")]
print(json.dumps({{"pss": r["Pss"], "rss": r["Rss"], "compiler_modules": len(compiler),
                  "modules": len(sys.modules)}}))
"""


def measure(artifact: Path, cache: Path, backend: str, with_compiler: bool) -> dict:
    code = CHILD.format(artifact=str(artifact), cache=str(cache), backend=backend,
                        with_compiler=with_compiler)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--backend", default="numpy", choices=["numpy", "opencv", "onnxruntime", "litert"])
    args = p.parse_args()
    from iotrt import models
    from iotrt.compiler import compile_model

    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "face.iotm"
        compile_model(models.path(models.BLAZEFACE), artifact)
        rows = {False: [], True: []}
        for _ in range(args.runs):  # alternate, so that load on the machine hits both alike
            for with_compiler in (False, True):
                rows[with_compiler].append(measure(artifact, Path(tmp), args.backend, with_compiler))
    for with_compiler, label in ((True, "reference: + import iotrt.compiler"), (False, "model load")):
        pss = statistics.median(r["pss"] for r in rows[with_compiler]) / 1024
        rss = statistics.median(r["rss"] for r in rows[with_compiler]) / 1024
        mods = rows[with_compiler][0]
        print(f"{label:36s} PSS {pss:6.1f} MB  RSS {rss:6.1f} MB  modules {mods['modules']}, "
              f"of them iotrt.compiler {mods['compiler_modules']}")
    ref = statistics.median(r["pss"] for r in rows[True])
    ours = statistics.median(r["pss"] for r in rows[False])
    loaded = max(r["compiler_modules"] for r in rows[False])
    print(f"PSS ratio model load / reference: {ours / ref:.3f} ({(ref - ours) / 1024:.2f} MB less); "
          f"target: no iotrt.compiler module imported: {'met' if loaded == 0 else 'MISSED'}")
    return 0 if loaded == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
