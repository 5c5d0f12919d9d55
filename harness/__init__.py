"""The real parts the test suite and the benchmarks both start, in one place neither has to reach
into the other for: `pg` (a throwaway PostgreSQL server), `topology` (serve replicas in network
namespaces behind HAProxy) and `bundles` (tiny real bundles, no training). Importable from the
repository root: pytest puts it on `sys.path` (pyproject's `pythonpath`), the benchmarks insert it."""
