"""The GPU proof run (issue 14): the carry set of wheels for the lent H200 machine
(`benchmarks.gpu.carry`), the full-size random-weight checkpoint written there
(`benchmarks.gpu.checkpoint`), and the device script (`run_h200.sh`, `device_run.py`).

Nothing here is imported by the tests' engine runs or installed; PLAN.md says how a
session with a device spends its minutes.
"""
