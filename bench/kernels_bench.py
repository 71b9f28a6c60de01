"""Benchmarks the feature-transform kernels against NumPy chained ops, scikit-learn and the memory copy bandwidth.

Run: flock /tmp/infergate-bench.lock .venv/bin/python bench/kernels_bench.py [--rows 1000000] [--out bench/results]
(the lock keeps benchmarks on a shared machine from overlapping). Prints a table and writes
bench/results/kernels-<date>.md with the command, hardware, versions and raw numbers.
"""

import argparse
import datetime
import functools
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

N_COLS = 64  # columns of the large and small batches
SMALL_ROWS = 256  # rows of the small-batch (latency) case
SMALL_CALLS = 2000  # calls timed for the small-batch median
LARGE_REPEATS = 5  # best-of repeats for the large batch
HASH_ROWS = 100_000  # rows of tokens for the hashing case
HASH_TOKENS = 20  # tokens per row
HASH_FEATURES = 2**8  # hash width; the dense output (rows x width) must stay small next to the hashing work
SEED = 0
LOCK_PATH = "/tmp/infergate-bench.lock"  # benchmarks on a shared machine run under `flock LOCK_PATH ...`


def best_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: page faults of first-touch buffers, lazy thread pools
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def median_us(fn: Callable[[], object], calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def hardware() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu": model, "cores usable": str(cores), "load average (1 min) at start": f"{load:.2f}",
            "platform": platform.platform()}


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def holds_bench_lock() -> bool:
    """Whether this process or one of its parents (the `flock` wrapper) holds LOCK_PATH, per /proc/locks."""
    try:
        inode = os.stat(LOCK_PATH).st_ino
        entries = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return False
    holders = {int(fields[4]) for fields in (line.split() for line in entries)
               if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode)}
    return bool(holders & _ancestors())


def command() -> str:
    """The command line as run, with the lock wrapper if it held the benchmark lock."""
    line = " ".join([".venv/bin/python" if ".venv" in sys.executable else "python", *sys.argv])
    return f"flock {LOCK_PATH} {line}" if holds_bench_lock() else f"{line} (not under the benchmark lock)"


def versions() -> dict[str, str]:
    import sklearn

    out = {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__}
    for name in ("numba", "Cython"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    try:
        from infergate.kernels import _cython_kernels

        out["cython kernels' single-affine loop"] = _cython_kernels.simd_level()
    except ImportError:
        out["cython kernels' single-affine loop"] = "not built"
    head = Path(__file__).resolve().parents[1] / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref[5:]).read_text().strip()
        out["commit"] = ref[:12]
    except OSError:
        out["commit"] = "unknown"
    return out


def pipeline_case(n_rows: int) -> tuple[list[tuple[str, float, float]], dict[str, float]]:
    """(name, seconds, GB/s) for the 4-op pipeline, plus small-batch latencies in us."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    from infergate import kernels as K

    rng = np.random.default_rng(SEED)
    X = rng.normal(loc=3.0, scale=2.0, size=(n_rows, N_COLS)).astype(np.float32)
    X[rng.random(n_rows) < 0.05, 7] = np.nan
    # 4 ops: impute -> standardize -> minmax -> clip (MinMaxScaler(clip=True) is minmax + clip).
    sk = make_pipeline(SimpleImputer(), StandardScaler(), MinMaxScaler(clip=True)).fit(X[:100_000])
    imp, std, mm = sk[0], sk[1], sk[2]
    fill, mean, scale = imp.statistics_.astype(np.float32), std.mean_.astype(np.float32), std.scale_.astype(np.float32)
    mm_scale, mm_min = mm.scale_.astype(np.float32), mm.min_.astype(np.float32)
    nbytes = 2 * X.nbytes  # bytes read + written by one pass (float32 in, float32 out)
    dst = np.empty_like(X)
    rows = [("memory copy (np.copyto)", best_s(lambda: np.copyto(dst, X), LARGE_REPEATS))]

    def numpy_chained() -> np.ndarray:
        out = np.where(np.isnan(X), fill, X)
        out = (out - mean) / scale
        out = out * mm_scale + mm_min
        clipped: np.ndarray = np.clip(out, 0.0, 1.0)
        return clipped

    rows.append(("NumPy chained ops", best_s(numpy_chained, LARGE_REPEATS)))
    rows.append(("scikit-learn Pipeline.transform", best_s(lambda: sk.transform(X), 2)))
    small = X[:SMALL_ROWS].copy()
    latencies = {"scikit-learn Pipeline.transform": median_us(lambda: sk.transform(small), 200),
                 "NumPy chained ops": median_us(numpy_chained_small(small, fill, mean, scale, mm_scale, mm_min), 500)}
    expected = sk.transform(X[:1000])
    for backend in K.available_backends():
        pipeline = K.from_sklearn(sk, backend=backend)
        assert isinstance(pipeline, K.Pipeline)  # a fitted scikit-learn Pipeline translates to one
        pipeline.warm_up()
        np.testing.assert_allclose(pipeline.transform(X[:1000]), expected, rtol=1e-5, atol=1e-6)
        out = np.empty((n_rows, pipeline.n_features_out), np.float32)
        # partial binds this iteration's pipeline and buffer (a bare lambda would see the loop's last ones).
        rows.append((f"infergate {backend} (out= buffer)",
                     best_s(functools.partial(pipeline.transform, X, out=out), LARGE_REPEATS)))
        rows.append((f"infergate {backend} (new array)",
                     best_s(functools.partial(pipeline.transform, X), LARGE_REPEATS)))
        calls = SMALL_CALLS if backend != "numpy" else 300
        latencies[f"infergate {backend}"] = median_us(functools.partial(pipeline.transform, small), calls)
    return [(name, s, nbytes / s / 1e9) for name, s in rows], latencies


def numpy_chained_small(X: np.ndarray, *p: np.ndarray) -> Callable[[], np.ndarray]:
    fill, mean, scale, mm_scale, mm_min = p
    return lambda: np.clip(((np.where(np.isnan(X), fill, X) - mean) / scale) * mm_scale + mm_min, 0.0, 1.0)


def hashing_case() -> list[tuple[str, float]]:
    from sklearn.feature_extraction import FeatureHasher

    from infergate import kernels as K
    from infergate.kernels.hashing import pack_tokens

    rng = np.random.default_rng(SEED)
    vocab = [f"tok{i}_{'x' * (i % 13)}" for i in range(50_000)]
    picks = rng.integers(0, len(vocab), size=(HASH_ROWS, HASH_TOKENS))
    rows = [[vocab[j] for j in row] for row in picks]
    fh = FeatureHasher(HASH_FEATURES, input_type="string", dtype=np.float32)
    expected = fh.transform(rows).toarray()
    results = [("scikit-learn FeatureHasher.transform (sparse)", best_s(lambda: fh.transform(rows), 3)),
               ("scikit-learn FeatureHasher.transform + toarray", best_s(lambda: fh.transform(rows).toarray(), 3))]
    packed = pack_tokens(rows)
    for backend in K.available_backends():
        hasher = K.from_sklearn(fh, backend=backend)
        assert isinstance(hasher, K.TokenHasher)  # a FeatureHasher translates to one
        assert np.array_equal(hasher.transform(rows), expected), backend  # bit-identical
        results.append((f"infergate {backend} (Python lists)", best_s(functools.partial(hasher.transform, rows), 3)))
        results.append((f"infergate {backend} (packed bytes, as a BYTES tensor)",
                        best_s(functools.partial(hasher.transform_packed, *packed), 3)))
    return results


def render(n_rows: int, pipe: list[tuple[str, float, float]], latencies: dict[str, float],
           hashing: list[tuple[str, float]]) -> str:
    copy_gbs = pipe[0][2]
    numpy_s = next(s for name, s, _ in pipe if name == "NumPy chained ops")
    sk_s = next(s for name, s, _ in pipe if name.startswith("scikit-learn"))
    lines = [f"# Feature-transform kernels benchmark ({datetime.date.today().isoformat()})", ""]
    lines += [f"- command: `{command()}`"]
    lines += [f"- {k}: {v}" for k, v in {**hardware(), **versions()}.items()]
    lines += ["", f"## 4-op pipeline (impute, standardize, minmax, clip) on {n_rows:,} x {N_COLS} float32", "",
              "Bytes moved per pass = input + output = 2 x 4 B x rows x columns. Best of "
              f"{LARGE_REPEATS}. Goal: >= 5x NumPy chained, >= 10x scikit-learn, >= 70% of copy bandwidth.", "",
              "| implementation | time (ms) | effective GB/s | % of copy bandwidth | vs NumPy chained "
              "| vs scikit-learn |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, s, gbs in pipe:
        lines.append(f"| {name} | {s * 1e3:.1f} | {gbs:.2f} | {100 * gbs / copy_gbs:.0f}% | {numpy_s / s:.1f}x "
                     f"| {sk_s / s:.1f}x |")
    lines += ["", f"## Small batch: {SMALL_ROWS} x {N_COLS} float32, median per call (goal < 10 us)", "",
              "| implementation | us per call |", "|---|---:|"]
    lines += [f"| {name} | {us:.1f} |" for name, us in latencies.items()]
    sk_hash = hashing[0][1]
    lines += ["", f"## Feature hashing: {HASH_ROWS:,} rows x {HASH_TOKENS} tokens -> {HASH_FEATURES} columns "
              "(goal >= 3x FeatureHasher, bit-identical: checked)", "",
              "| implementation | time (ms) | vs FeatureHasher (sparse) |", "|---|---:|---:|"]
    lines += [f"| {name} | {s * 1e3:.1f} | {sk_hash / s:.1f}x |" for name, s in hashing]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    pipe, latencies = pipeline_case(args.rows)
    report = render(args.rows, pipe, latencies, hashing_case())
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"kernels-{datetime.date.today().isoformat()}.md"
    target.write_text(report, encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
