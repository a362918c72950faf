"""edgecore's benchmark harness: `python -m bench` (load scenarios against nginx proxy_cache, Varnish and the
Python ceiling, see bench/README.md) and pytest-benchmark micro-benchmarks (`pytest bench/ --benchmark-only`).
"""
