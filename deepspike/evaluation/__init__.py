"""Scoring against ground truth: SpikeInterface's comparison and the one Hungarian matching (``compare``), and
``deepspike-bench``, which runs DeepSpike and other sorters side by side (``bench``, options in ``bench_config``) on a
seeded, tiered set (``bench_set``).
"""
