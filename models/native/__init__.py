"""The fused LSTM recurrence (``lstm.c``), compiled on first use with the machine's C compiler.

Why C: at the model's widths (5-10 units, 32 windows) a time step of one LSTM layer is a few
hundred multiply-adds per window, so any tensor-operation implementation pays per operation and
per pass over memory rather than per flop; eager PyTorch on this CPU has no fused cell, and
``torch.compile`` needs seconds per shape. Plain C, vectorised by the compiler, runs a layer's whole
recurrence in one call. It needs no Python headers and no PyTorch headers, so it builds in under a
second; the library is cached per source, flags and CPU (``-march=native``) under
``$QUANTNET_CACHE`` (default ``~/.cache/quantnet``). Where no compiler works, or with
``QUANTNET_NATIVE=0``, :func:`lstm_kernel` returns None and callers use their PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

_HERE = Path(__file__).parent
_SOURCES = ("lstm.c", "lstm_body.h")
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared")
_lock = threading.Lock()
_loaded: list[ctypes.CDLL | None] = []


def _cpu_key() -> str:
    """The CPU's feature flags: a library built with -march=native must not run on another CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _library_path() -> Path:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((_HERE / name).read_bytes())
    h.update(" ".join(_FLAGS).encode())
    h.update(platform.machine().encode())
    h.update(_cpu_key().encode())
    root = Path(os.environ.get("QUANTNET_CACHE") or Path.home() / ".cache" / "quantnet")
    return root / "native" / f"lstm-{h.hexdigest()[:16]}.so"


def _build(target: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc or gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    # built beside the target and renamed into place: concurrent processes (search trials) race safely
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, *_FLAGS, "-o", tmp, str(_HERE / "lstm.c"), "-lm"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if proc.returncode:
            raise OSError(f"{cc} failed: {proc.stderr.strip()[:500]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> None:
    p, n = ctypes.c_void_p, ctypes.c_long
    lib.carry_arrays.argtypes = [n, n] + [p] * 7
    lib.carry_arrays.restype = None
    for suffix in ("f32", "f64"):
        getattr(lib, f"lstm_forward_{suffix}").argtypes = [n, n, n, n, p, n, n] + [p] * 10
        getattr(lib, f"lstm_backward_{suffix}").argtypes = [n, n, n, n, p, n, n] + [p] * 13
        getattr(lib, f"lstm_backward_scratch_{suffix}").argtypes = [n, n, n]
        getattr(lib, f"lstm_backward_scratch_{suffix}").restype = n
        carried = [p, n] + [p] * 5  # src, ld, starts, after, keep, at, value
        getattr(lib, f"head_forward_{suffix}").argtypes = [n, n, n, n] + [p] * 3 + carried + [p] * 4
        getattr(lib, f"head_backward_{suffix}").argtypes = [n, n, n, n] + [p] * 2 + carried + [p] * 7
        getattr(lib, f"dropout_mask_{suffix}").argtypes = [n, ctypes.c_uint64, ctypes.c_double, p]
        getattr(lib, f"gather_windows_{suffix}").argtypes = [n, n, n, p, p, p]
        for name in ("lstm", "head"):
            getattr(lib, f"{name}_forward_{suffix}").restype = None
            getattr(lib, f"{name}_backward_{suffix}").restype = None
        for name in ("dropout_mask", "gather_windows"):
            getattr(lib, f"{name}_{suffix}").restype = None


def lstm_kernel() -> ctypes.CDLL | None:
    """The compiled recurrence, built on first call; None where it cannot be built or is disabled
    (a warning says why, once)."""
    if _loaded:
        return _loaded[0]
    with _lock:
        if _loaded:
            return _loaded[0]
        lib = None
        if os.environ.get("QUANTNET_NATIVE", "1") != "0":
            try:
                path = _library_path()
                if not path.exists():
                    _build(path)
                lib = ctypes.CDLL(str(path))
                _declare(lib)
            except (OSError, subprocess.SubprocessError) as exc:
                warnings.warn(
                    f"fused LSTM kernel unavailable ({exc}); training uses the PyTorch recurrence",
                    RuntimeWarning,
                    stacklevel=2,
                )
                lib = None
        _loaded.append(lib)
        return lib


def supports(t: torch.Tensor) -> bool:
    """Whether the kernel can run on ``t``'s device and dtype."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
