"""Load-test harness and side-by-side benchmarks."""
