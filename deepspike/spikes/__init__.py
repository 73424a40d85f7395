"""Spikes out of a band-passed recording: threshold peak detection (``detect``), windows cut and resampled onto
the canonical 24 kHz grid (``windows``), and the chunked composition of both with ground-truth labels
(``extract``: ``extract_spikes`` -> ``SpikeSet``). Shared by corpus building and sorting.
"""
