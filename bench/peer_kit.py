"""Where the side-by-side kit lies (bench/peers/, shipped in the package) and where its caches go."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from infergate.models.examples import default_cache_dir

logger = logging.getLogger(__name__)

# Scripts run by path, not imported: the peers' Python files run in the peers' own venvs.
PEERS_DIR = Path(__file__).resolve().parent / "peers"
PERF_ANALYZER_INSTALLER = PEERS_DIR / "install_perf_analyzer.sh"
CACHE_ENV = "INFERGATE_BENCH_CACHE"  # overrides the whole bench cache


def launcher(peer: str) -> Path:
    """bench/peers/<peer>/run.sh: starts that peer in the background and returns once it serves."""
    return PEERS_DIR / peer / "run.sh"


def default_bench_cache() -> Path:
    """$INFERGATE_BENCH_CACHE, else <infergate's cache>/bench: perf_analyzer, reference models, peer venvs.

    A user cache, never the source tree or site-packages: the peer venvs alone are gigabytes, and an
    installed package's folder may be read-only.
    """
    explicit = os.environ.get(CACHE_ENV)
    return Path(explicit).expanduser() if explicit else default_cache_dir() / "bench"


def default_work_dir(command: str) -> Path:
    """Scratch for one bench command (infergate's model repository): <bench cache>/work/<command>."""
    return default_bench_cache() / "work" / command


def perf_analyzer_install_command(directory: Path) -> str:
    """The command line that installs perf_analyzer into directory, for messages."""
    return f"bash {PERF_ANALYZER_INSTALLER} {directory}"
