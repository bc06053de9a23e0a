"""One-off measurement scripts and their shared harness (`benchmarks.harness`).

Not installed: run from the root of a checkout, `python -m benchmarks.<script>`. The load
tool in `benchmarks/af3_bench/` is installed as its own package, `af3_bench`.
"""
