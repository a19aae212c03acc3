"""TensorRT's real Python bindings without a GPU: PyPI's bindings wheel over stand-in libraries.

The `tensorrt-cu12-bindings` wheel (`tensorrt-bindings` before TensorRT 10)
holds the real pybind11 module, about 1 MB; the libraries it links
(libnvinfer, libnvonnxparser, libnvinfer_plugin) are the multi-GB `-libs`
wheels.  Here they are replaced by stand-ins built with the system C compiler,
under the sonames the module names (`readelf -d`): one function for each
symbol the module imports from them (`nm -D`), returning NULL.  That is enough
to import the module and read every class, method, enum member and docstring.
Anything that reaches TensorRT itself (a Builder, a Runtime) gets NULL, so
nothing here can build or run an engine.

The wheel is fetched once with `pip download` into pytest's cache directory.
The module is imported only in subprocesses (`run_with_tensorrt`), never into
the test run, so `import tensorrt` keeps failing for every other test.

Run as a script (inside such a subprocess) it prints the bindings' API as JSON.
"""

from __future__ import annotations

import ctypes
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# JetPack 6.1/6.2's TensorRT, a recent 10.x (10.12+ deprecates the FP16 builder flag) and an 11.x.
VERSIONS = ("10.3.0", "10.13.0.35", "11.4.0.106")
OLD_VERSION = "8.6.1"  # what JetPack 6.0 ships (8.6.2 there; 8.6.1 is the last 8.x on PyPI)

SHIM = '''"""`import tensorrt` gives the bindings module, as the tensorrt wheel's own package does."""
import sys

import tensorrt_bindings

sys.modules[__name__] = tensorrt_bindings
'''


class Unavailable(Exception):
    """The bindings cannot be had on this machine (the message is one line saying why)."""


def distribution(version: str) -> str:
    return "tensorrt-bindings" if int(version.split(".")[0]) < 10 else "tensorrt-cu12-bindings"


def _download(version: str, wheels: Path) -> Path:
    pattern = f"{distribution(version).replace('-', '_')}-{version}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(wheels)]
        done = subprocess.run([*command, f"{distribution(version)}=={version}"], capture_output=True, text=True, timeout=600)
        found = sorted(wheels.glob(pattern))
        if done.returncode != 0 or not found:
            last = (done.stderr.strip().splitlines() or ["no wheel for this platform"])[-1]
            raise Unavailable(f"cannot download {distribution(version)}=={version}: {last}")
    return found[-1]


def _stand_in_source(module: Path) -> str:
    """C source defining every unversioned symbol `module` imports that this process does not provide."""
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(module)], capture_output=True, text=True, check=True).stdout
    here = ctypes.CDLL(None)  # the interpreter and the C library
    symbols = [f[1] for f in (line.split() for line in nm.splitlines()) if len(f) == 2 and f[0] == "U" and "@" not in f[1] and not hasattr(here, f[1])]
    return "".join(f"void *{name}(void) {{ return 0; }}\n" for name in symbols)


def _build_stand_ins(module: Path) -> None:
    """Stand-in TensorRT libraries beside `module` (its RPATH has $ORIGIN), one per soname it needs."""
    dynamic = subprocess.run(["readelf", "-d", str(module)], capture_output=True, text=True, check=True).stdout
    source = module.parent / "stand_in.c"
    source.write_text(_stand_in_source(module))
    for soname in re.findall(r"\(NEEDED\)\s+Shared library: \[(libnv[^\]]+)\]", dynamic):
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(module.parent / soname), f"-Wl,-soname,{soname}", str(source)], check=True, capture_output=True)


def tensorrt_site(version: str, cache: Path) -> Path:
    """A directory on whose path `import tensorrt` loads the real bindings of `version` (raises Unavailable)."""
    site = cache / version
    if (site / "tensorrt.py").is_file():
        return site
    for tool in ("cc", "nm", "readelf"):
        if shutil.which(tool) is None:
            raise Unavailable(f"no `{tool}` here to build TensorRT's stand-in libraries")
    wheel = _download(version, cache / "wheels")
    work = Path(tempfile.mkdtemp(dir=cache, prefix=f".{version}-"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(work)
    _build_stand_ins(next((work / "tensorrt_bindings").glob("tensorrt*.so")))
    (work / "tensorrt.py").write_text(SHIM)
    try:
        work.rename(site)
    except OSError:  # another run made it first
        shutil.rmtree(work, ignore_errors=True)
    return site


def tensorrt_site_or_skip(request, version: str) -> Path:
    """`tensorrt_site` in pytest's cache directory, or skip the test with the one-line reason it cannot be had."""
    import pytest

    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider: a temporary directory then
    folder = cache.mkdir("tensorrt-bindings") if cache else request.getfixturevalue("tmp_path_factory").getbasetemp() / "tensorrt-bindings"
    folder.mkdir(exist_ok=True)
    try:
        return tensorrt_site(version, folder)
    except Unavailable as exc:
        pytest.skip(str(exc))


def run_with_tensorrt(site: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python *args` in a subprocess where `import tensorrt` is the bindings at `site` and merino_edge this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def _signed_doc(name: str, function) -> str:
    """The docstring, led by a signature line: pybind11 writes one; for Python functions it comes from inspect."""
    doc = function.__doc__ or ""
    try:
        return f"{name}{inspect.signature(function)}\n{doc}"
    except (TypeError, ValueError):  # a pybind11 function: no signature object, its docstring has it
        return doc


def api_of(trt) -> dict:
    """Every public name of the bindings: module attributes, and each class (by qualified name) with its members."""
    classes: dict[str, dict] = {}

    def visit(cls: type) -> None:
        if cls.__qualname__ in classes or not cls.__module__.startswith("tensorrt"):
            return
        members: dict[str, dict] = {}
        classes[cls.__qualname__] = {"mro": [c.__qualname__ for c in cls.__mro__], "doc": cls.__doc__ or "", "members": members}
        for name in dir(cls):
            raw = inspect.getattr_static(cls, name, None)
            if isinstance(raw, property):
                members[name] = {"kind": "property", "doc": (raw.fget and raw.fget.__doc__) or "", "about": raw.__doc__ or "", "settable": raw.fset is not None}
            elif isinstance(raw, type):
                members[name] = {"kind": "class", "type": raw.__qualname__}
                visit(raw)
            elif callable(raw) or isinstance(raw, (staticmethod, classmethod)):
                members[name] = {"kind": "method", "doc": _signed_doc(name, getattr(cls, name))}
            else:
                members[name] = {"kind": "value", "type": type(raw).__qualname__}
                visit(type(raw))

    module = {}
    for name in dir(trt):
        obj = getattr(trt, name)
        if isinstance(obj, type):
            module[name] = {"kind": "class", "type": obj.__qualname__}
            visit(obj)
        elif callable(obj):
            module[name] = {"kind": "function", "doc": _signed_doc(name, obj)}
        else:
            module[name] = {"kind": "value", "type": type(obj).__qualname__}
    return {"version": trt.__version__, "module": module, "classes": classes}


if __name__ == "__main__":
    import tensorrt

    print(json.dumps(api_of(tensorrt)))
