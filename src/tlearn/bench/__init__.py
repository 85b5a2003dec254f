"""``make bench``: the figures behind tlearn's speed claims, printed (and written to
reports/bench.json). Each module is one benchmark with a ``main()``; speed depends on the
machine and its load, so these are measurements, never test thresholds."""
