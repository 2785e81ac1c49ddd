"""``obs bench``: one module per benchmark, each exposing ``register(bench_subparsers)``.

The command line discovers every module of this package, so adding a benchmark
never edits ``launch/cli.py``. Figures and commands are in ``docs/benchmarks.md``.
"""
