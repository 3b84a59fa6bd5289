"""The demo's bundled synthetic data (pool.jsonl, probes.jsonl); regenerate with
``python -m service.demo_data.generate``."""
