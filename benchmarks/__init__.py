"""tifffs benchmarks: data, contenders, mounts, the runner, targets and the report.

Run through ``scripts/bench`` (it provides the virtual environment); timing claims
belong here, never in tests.
"""
