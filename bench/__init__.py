"""Benchmarks of the bot's own cost per generation, next to a bare python-telegram-bot baseline.

Run ``python -m bench.run`` (``--quick`` for a smoke run). See ``bench/README.md``.
"""
