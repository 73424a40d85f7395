"""Clustering spike features into units: options (``params``), the per-channel driver (``cluster``), one module
per method found through the registry (``methods``: ``gmm``, ``dpgmm``, ``hdbscan``, ``kmeans``), the Gaussian-mixture
building blocks they share (``mixture``), noise and artifact clean-up
(``cleanup``) and the split/merge tests between units (``merge``).
"""
