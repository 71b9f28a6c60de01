#!/usr/bin/env bash
# Installs Triton's perf_analyzer (the load tool inside the tritonclient 2.51.0 wheel) into DIR.
# Why 2.51.0: the PyPI package "perf-analyzer" is an empty placeholder, and the binaries in tritonclient
# 2.52+ need glibc 2.38 (Debian 12 has 2.36). 2.51.0 needs libb64 (Debian) and libcudart 12 (PyPI; only
# loaded, no GPU used).
#   install_perf_analyzer.sh [DIR]    then run DIR/perf_analyzer ...
# DIR defaults to the bench cache that `infergate bench` uses: $INFERGATE_BENCH_CACHE, else
# $INFERGATE_CACHE_DIR/bench, else ${XDG_CACHE_HOME:-~/.cache}/infergate/bench; then /perf_analyzer.
# PYTHON (default python3) is the interpreter whose pip downloads the wheels.
set -euo pipefail
cache=${INFERGATE_BENCH_CACHE:-${INFERGATE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/infergate}/bench}
dir=${1:-$cache/perf_analyzer}
python=${PYTHON:-python3}
mkdir -p "$dir/lib" "$dir/dl"
if ! ldconfig -p | grep -q 'libb64.so.0d'; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "perf_analyzer needs libb64.so.0d: sudo apt-get install libb64-0d, then run this again" >&2
    exit 1
  fi
  (apt-get install -y -q libb64-0d >/dev/null 2>&1) || (apt-get update -q >/dev/null && apt-get install -y -q libb64-0d >/dev/null)
fi
"$python" -m pip download -q tritonclient==2.51.0 --no-deps --only-binary=:all: --platform manylinux1_x86_64 -d "$dir/dl"
"$python" -m pip download -q nvidia-cuda-runtime-cu12 --no-deps --only-binary=:all: -d "$dir/dl"
"$python" - "$dir" <<'PY'
import glob, os, shutil, sys, zipfile
d = sys.argv[1]
with zipfile.ZipFile(glob.glob(f"{d}/dl/tritonclient-2.51.0-*.whl")[0]) as z:
    name = next(n for n in z.namelist() if n.endswith("/bin/perf_analyzer"))
    with z.open(name) as src, open(f"{d}/perf_analyzer.bin", "wb") as dst:
        shutil.copyfileobj(src, dst)
with zipfile.ZipFile(glob.glob(f"{d}/dl/nvidia_cuda_runtime_cu12-*.whl")[0]) as z:
    name = next(n for n in z.namelist() if "/lib/libcudart.so.12" in n)
    with z.open(name) as src, open(f"{d}/lib/libcudart.so.12", "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(f"{d}/perf_analyzer.bin", 0o755)
PY
# A wrapper, so that callers need no LD_LIBRARY_PATH of their own for libcudart.
cat > "$dir/perf_analyzer" <<SH
#!/usr/bin/env bash
LD_LIBRARY_PATH="$dir/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dir/perf_analyzer.bin" "\$@"
SH
chmod +x "$dir/perf_analyzer"
"$dir/perf_analyzer" --version 2>&1 | head -2 || true
echo "perf_analyzer installed: $dir/perf_analyzer"
