"""`iotrt enroll NAME PHOTO... [--gallery PATH]`: add a person to a face gallery from photos.

Each photo must show the person's face (the largest face is taken when there are several). The
gallery is written only when every photo worked, so a typo in one file name never leaves a
half-enrolled person behind. The work is done by the identity kind's enrolment module, which
its SPEC names (`enroll`, found through the kind registry iotrt.kinds): the identity node reads
the gallery this writes.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from iotrt import kinds
from iotrt.errors import UsageError

KIND = "identity"   # the kind whose gallery `iotrt enroll` writes


def _enrolment():
    """The enrolment module the identity kind's SPEC names (see NodeSpec.enroll)."""
    return importlib.import_module(kinds.spec(KIND).enroll)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="the person's name, as rules will see it")
    p.add_argument("photos", nargs="*", type=Path, help="photos showing the person's face")
    p.add_argument("--gallery", type=Path, default=Path("gallery.npz"),
                   help="gallery file to create or extend (default: ./gallery.npz)")
    p.add_argument("--method", choices=_enrolment().enroll_methods(), default="lbp",
                   help="lbp: no model, convenience-grade (default); embedding: a face-embedding "
                        "model given with --model")
    p.add_argument("--model", default="", help="embedding: face-embedding model "
                                               "(.onnx/.tflite, compiled once, or .iotm)")
    p.add_argument("--embed-mean", type=float, default=127.5,
                   help="embedding: model input = (pixel - mean) / std (default 127.5)")
    p.add_argument("--embed-std", type=float, default=127.5, help="embedding: see --embed-mean")
    p.add_argument("--detector", default="", help="face detector model (default: the shipped BlazeFace)")
    p.add_argument("--backend", default="auto", help="engine backend (default: auto)")
    p.add_argument("--replace", action="store_true", help="drop NAME's earlier photos first")
    p.add_argument("--remove", action="store_true", help="remove NAME from the gallery")
    p.add_argument("--list", action="store_true", help="list the people in the gallery")


def run(args: argparse.Namespace) -> int:
    tools = _enrolment()
    if args.list:
        print(*tools.gallery_listing(args.gallery), sep="\n")
        return 0
    if not args.name:
        raise UsageError("give a NAME and at least one PHOTO (or --list)")
    method = tools.Method(args.method, args.model, args.embed_mean, args.embed_std, args.backend)
    if args.remove:
        removed = tools.unenroll(args.gallery, args.name, method)
        print(f"removed {args.name} ({removed} photo(s)) from {args.gallery}")
        return 0
    if not args.photos:
        raise UsageError("give at least one PHOTO of the person")
    gallery = tools.enroll(args.gallery, args.name, args.photos, method, args.detector,
                           args.replace, progress=lambda line: print(line, flush=True))
    print(f"enrolled {args.name} from {len(args.photos)} photo(s) into {args.gallery} "
          f"({len(gallery.people)} people, {len(gallery)} photos, method {args.method})")
    return 0
