"""`infergate bench` without the `bench` extra: one line per missing package, and every result but the plots."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from infergate.bench import cli as bench_cli
from infergate.bench.loadgen import runner
from infergate.bench.loadgen.errors import BenchError

from harness import ServerProcess

# Runs the CLI with matplotlib and rich unimportable (a None entry in sys.modules makes `import` raise ImportError).
WITHOUT_EXTRAS = ("import sys; sys.modules['matplotlib'] = sys.modules['rich'] = None; "
                  "from infergate.server.cli import main; sys.exit(main(sys.argv[1:]))")
INSTALL_LINE = "pip install 'infergate[bench]'"


def test_bench_without_matplotlib_writes_every_result_but_the_plots(bench_server: ServerProcess,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, "bench", "--target", bench_server.address, "--model", "classifier",
         "--concurrency", "2", "--requests", "40", "--warmup-s", "0.2", "--out", str(out), "--log-level", "warning"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "infergate bench: matplotlib is not installed, so no PNG plots; the other results are written in full "
        f"({INSTALL_LINE} adds the plots)"]
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]
    (point,) = json.loads((out / "results.json").read_text())["points"]
    assert (point["ok"], point["errors"]) == (40, {})
    assert "classifier" in (out / "results.md").read_text()


def _args(**fields: object) -> argparse.Namespace:
    return argparse.Namespace(**{"bench_command": None, "out": None, "no_plots": False, "quiet": False, **fields})


def test_without_rich_on_a_terminal_the_progress_display_is_off_with_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setattr(runner, "_quiet", lambda: False)  # as on a terminal outside CI
    args = _args()
    bench_cli.without_missing_extras(args)
    assert args.quiet
    assert capsys.readouterr().err == (f"infergate bench: rich is not installed, so no progress display "
                                       f"({INSTALL_LINE} adds it)\n")


def test_without_rich_agreement_refuses_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setattr(runner, "_quiet", lambda: False)
    with pytest.raises(BenchError, match=r"rich is not installed.*pip install 'infergate\[bench\]'"):
        bench_cli.without_missing_extras(_args(bench_command="agreement"))


def test_with_the_extras_or_quiet_nothing_changes(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(runner, "_quiet", lambda: False)
    args = _args(out=tmp_path)
    bench_cli.without_missing_extras(args)  # the test extra installs matplotlib and rich
    monkeypatch.setitem(sys.modules, "rich", None)
    quiet = _args(quiet=True)
    bench_cli.without_missing_extras(quiet)
    assert (args.no_plots, args.quiet, quiet.quiet, capsys.readouterr().err) == (False, False, True, "")
