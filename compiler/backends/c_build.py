"""Build a generated C project with the host compiler and run it on inputs (for run/verify/tests)."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .. import progress
from ..errors import BnncError

DEFAULT_FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off")


def cache_dir() -> Path:
    root = os.environ.get("BNNC_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME")
                                                        or os.path.expanduser("~/.cache"), "bnnc")
    return Path(root)


def find_cc(cc: str | None = None) -> list:
    """The C compiler command as a list: CC (or `cc`) split into words as make and the shell do,
    so that CC="cc -march=native" adds its flags; refused when its program is not found."""
    text = cc or os.environ.get("CC") or "cc"
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise BnncError(f"CC={text!r} does not split into words ({e})") from None
    if not words or shutil.which(words[0]) is None:
        raise BnncError(f"C compiler '{words[0] if words else text}' not found (set CC)")
    return words


def cached_build(files: dict, cmd: list, product: str, prefix: str = "", key: str = "",
                 what: str = "generated C") -> Path:
    """Write `files` into a fresh directory, run the compile command `cmd` there and return the
    path of `product` in it. Cached in cache_dir() by the files' contents, the command and `key`
    (e.g. a compiler version); concurrent builds of the same key race harmlessly (the first
    rename wins). A failed build raises with the compiler's messages."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    h.update(" ".join(cmd).encode() + b"\0" + key.encode())
    d = cache_dir() / (prefix + h.hexdigest()[:24])
    out = d / product
    if out.exists():
        return out
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix + "build-", dir=cache_dir()))
    for name, text in files.items():
        (tmp / name).write_text(text)
    progress.note(f"compiling {what}: {' '.join(cmd)}")
    with progress.step(f"compiling {what}"):
        r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"{what} failed to compile ({' '.join(cmd)}):\n{r.stderr[-4000:]}")
    try:
        tmp.rename(d)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build(files: dict, flags=DEFAULT_FLAGS, cc: str | None = None) -> Path:
    """Compile model.c + harness.c; returns the harness executable (cached by content and flags)."""
    return cached_build(files, [*find_cc(cc), *flags, "model.c", "harness.c", "-o", "harness"], "harness")


def kernel_variants(exe: Path) -> list:
    """The kernel variants the harness `exe` runs on this CPU, best first (`harness --kernels`)."""
    r = subprocess.run([str(exe), "--kernels"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"generated program failed (status {r.returncode}): {r.stderr[-4000:]}")
    return r.stdout.split()


def run(exe: Path, x: np.ndarray, input_dtype: str, output_dtype: str, output_elems: int,
        env: dict | None = None) -> np.ndarray:
    """Run the harness on x (N, ...) already on the input grid; returns (N, output_elems)."""
    n = x.shape[0]
    with tempfile.TemporaryDirectory() as td:
        fi, fo = Path(td) / "in.bin", Path(td) / "out.bin"
        np.ascontiguousarray(x.reshape(n, -1).astype(input_dtype)).tofile(fi)
        r = subprocess.run([str(exe), str(fi), str(fo)], capture_output=True, text=True,
                           env={**os.environ, **(env or {})})
        if r.returncode != 0:
            raise RuntimeError(f"generated program failed (status {r.returncode}): {r.stderr[-4000:]}")
        y = np.fromfile(fo, dtype=output_dtype)
    return y.reshape(n, output_elems)


LATENCY_SAMPLES = 8  # `run --stats`: samples timed one by one
LATENCY_SECONDS = 0.02  # per timed run of the harness's --bench loop


def latency(exe: Path, x: np.ndarray, input_dtype: str, per_sample_s: float) -> dict:
    """Microseconds per inference of the harness on the first LATENCY_SAMPLES samples, each
    timed by `bench` (best of 5 loops): mean, min and max over them."""
    iters = int(min(1_000_000, max(10, LATENCY_SECONDS / max(per_sample_s, 1e-7))))
    us = [bench(exe, x[i: i + 1], input_dtype, iters) / 1000 for i in range(min(LATENCY_SAMPLES, x.shape[0]))]
    return {"latency_us_mean": round(float(np.mean(us)), 3), "latency_us_min": round(float(np.min(us)), 3),
            "latency_us_max": round(float(np.max(us)), 3), "latency_samples": len(us),
            "latency_iterations": iters}


def bench(exe: Path, x: np.ndarray, input_dtype: str, iters: int, kernels: str | None = None) -> float:
    """Nanoseconds per inference (best of 5 runs of `iters`) on the first sample, with the kernel
    variant `kernels` (default: the one the harness picks)."""
    with tempfile.TemporaryDirectory() as td:
        fi = Path(td) / "in.bin"
        np.ascontiguousarray(x[:1].reshape(1, -1).astype(input_dtype)).tofile(fi)
        env = {**os.environ, "BNNC_KERNELS": kernels} if kernels else None
        r = subprocess.run([str(exe), "--bench", str(iters), str(fi)], capture_output=True, text=True, check=True,
                           env=env)
    return float(r.stdout.strip())
