"""`python -m af3_bench`: the `af3-bench` command."""

from af3_bench.cli import main

main()
