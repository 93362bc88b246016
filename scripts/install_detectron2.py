#!/usr/bin/env python3
"""Install detectron2 as pure Python into the current interpreter (stdlib only).

detectron2 is not on PyPI.  ``sal-detectron2==0.7.2`` is upstream detectron2 built as a
CPython 3.10-only wheel; everything labelprop uses from it (PointRend included) runs as
pure Python on top of torchvision's compiled ops.  This script

1. does nothing when ``import detectron2`` and its PointRend project already work
   (a detectron2 you built yourself is kept);
2. otherwise downloads the wheel (``pip download --no-deps --only-binary :all:
   --python-version 3.10``), repacks it as a ``py3-none-any`` pure-Python wheel: drops the
   compiled ``detectron2/_C*.so`` and the stray top-level ``tools`` package, relaxes
   ``numpy<2``, adds the requirements the wheel's metadata omits (``fvcore``, ``iopath``),
   marks it purelib and regenerates RECORD;
3. installs it with ``opencv-python-headless``, ``pycocotools`` and ``setuptools<81``
   (detectron2 imports ``pkg_resources``), under ``scripts/constraints-detect.txt`` so the
   pinned torch/torchvision pair is kept.

Usage:  python scripts/install_detectron2.py [--wheel-dir DIR] [--force] [--repack-only]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DIST = "sal-detectron2"
VERSION = "0.7.2"
HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE / "constraints-detect.txt"
EXTRA_REQUIRES = ["fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10"]
COMPANIONS = ["opencv-python-headless", "pycocotools>=2.0.7", "setuptools<81"]
PROBE = "import detectron2, detectron2.projects.point_rend; print(detectron2.__file__)"


def say(msg: str) -> None:
    print(f"install_detectron2: {msg}", flush=True)


def installed() -> str | None:
    """Path of a working detectron2 (with PointRend) in this interpreter, else None."""
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    r = subprocess.run(cmd)
    if r.returncode != 0:
        sys.exit(f"install_detectron2: failed: {' '.join(cmd)}")


def download(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"sal_detectron2-{VERSION}-*.whl"))
    original = [p for p in found if "py3-none-any" not in p.name]
    if original:
        return original[0]
    say(f"downloading {DIST}=={VERSION}")
    pip("download", "-q", "--no-deps", "--only-binary", ":all:", "--python-version", "3.10",
        "-d", str(dest), f"{DIST}=={VERSION}")
    original = [p for p in sorted(dest.glob(f"sal_detectron2-{VERSION}-*.whl"))
                if "py3-none-any" not in p.name]
    if not original:
        sys.exit(f"install_detectron2: pip download left no {DIST} wheel in {dest}")
    return original[0]


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _fix_metadata(text: str) -> str:
    lines = text.split("\n")
    out, added = [], False
    for line in lines:
        if re.match(r"Requires-Dist:\s*numpy\s*<\s*2\s*$", line):
            line = "Requires-Dist: numpy"
        if line.startswith("Requires-Dist:") and not added:
            out.extend(f"Requires-Dist: {req}" for req in EXTRA_REQUIRES)
            added = True
        out.append(line)
    if not added:
        raise SystemExit("install_detectron2: unexpected METADATA (no Requires-Dist lines)")
    return "\n".join(out)


def repack(src: Path, dest_dir: Path) -> Path:
    """Rewrite ``src`` as a pure-Python py3-none-any wheel in ``dest_dir``; return its path."""
    out = dest_dir / f"sal_detectron2-{VERSION}-py3-none-any.whl"
    dist_info = f"sal_detectron2-{VERSION}.dist-info"
    records: list[str] = []
    with zipfile.ZipFile(src) as zin:
        fd, tmp = tempfile.mkstemp(dir=dest_dir, suffix=".whl.tmp")
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
                for info in zin.infolist():
                    name = info.filename
                    if name.startswith("tools/") or re.match(r"detectron2/_C.*\.(so|pyd)$", name):
                        continue
                    if name == f"{dist_info}/RECORD" or name.endswith("/"):
                        continue
                    data = zin.read(name)
                    if name == f"{dist_info}/METADATA":
                        data = _fix_metadata(data.decode("utf-8")).encode("utf-8")
                    elif name == f"{dist_info}/WHEEL":
                        text = data.decode("utf-8")
                        text = re.sub(r"Root-Is-Purelib: \w+", "Root-Is-Purelib: true", text)
                        text = re.sub(r"(?m)^Tag: .*\n?", "", text).rstrip("\n")
                        data = (text + "\nTag: py3-none-any\n").encode("utf-8")
                    elif name == f"{dist_info}/top_level.txt":
                        keep = [t for t in data.decode().split() if t != "tools"]
                        data = ("\n".join(keep) + "\n").encode()
                    zout.writestr(name, data)
                    records.append(f"{name},{_record_hash(data)},{len(data)}")
                records.append(f"{dist_info}/RECORD,,")
                zout.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
            os.replace(tmp, out)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel-dir", type=Path, default=HERE.parent / "build" / "detectron2-wheel",
                    help="where the downloaded and the repacked wheels are kept")
    ap.add_argument("--force", action="store_true", help="reinstall even if detectron2 imports")
    ap.add_argument("--repack-only", action="store_true",
                    help="only download and repack; print the wheel's path")
    args = ap.parse_args()
    if not args.force and not args.repack_only:
        where = installed()
        if where:
            say(f"detectron2 already installed ({where}); nothing to do")
            return
    src = download(args.wheel_dir)
    wheel = repack(src, args.wheel_dir)
    say(f"repacked {src.name} -> {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB)")
    if args.repack_only:
        print(wheel)
        return
    pip("install", "-q", "-c", str(CONSTRAINTS), *(["--force-reinstall", "--no-deps"] if args.force else []),
        str(wheel), *COMPANIONS)
    if args.force:        # --no-deps above keeps torch; make sure the rest is there too
        pip("install", "-q", "-c", str(CONSTRAINTS), str(wheel), *COMPANIONS)
    where = installed()
    if not where:
        sys.exit("install_detectron2: installed, but `import detectron2.projects.point_rend` fails")
    say(f"detectron2 {VERSION} installed ({where})")


if __name__ == "__main__":
    main()
