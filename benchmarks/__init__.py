"""Benchmarks of airflow-provider-klingfx: ``make bench`` (``python benchmarks/run.py``) writes RESULTS.md."""
