"""Recordings in: open any supported file as a SpikeInterface recording (``readers``, ``arrays`` for .npy /
raw binary / MATLAB), its ground truth (``ground_truth``), band-pass and robust noise (``preprocess``), probe
layouts (``probes``) and seeded ground-truth generators (``synthetic``). Nothing here knows about spikes or models.
"""
