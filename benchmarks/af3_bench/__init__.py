"""`af3-bench`, the load tool: load-tests any OpenAI-compatible audio chat endpoint.

Installed as the top-level package `af3_bench` (its folder is `benchmarks/af3_bench/`) with
the `af3-bench` command; `python -m af3_bench` runs the same. Documented in
benchmarks/README.md. The rest of `benchmarks/` (one-off measurement scripts and their
harness) is not installed.
"""
