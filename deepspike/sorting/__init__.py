"""Sorting a recording with a frozen encoder: options (``params``), the pipeline (``pipeline``: motion correction ->
extract -> features -> cluster -> multichannel merge -> explained units dropped -> template matching), drift
correction on probes (``motion``), the stage cache a killed sort resumes from (``cache``), features from the encoder
or PCA (``features``), clustering with a method registry (``clustering/``), neighbourhoods of a probe
(``multichannel``), units that other units' templates explain (collisions, duplicate events: ``explained``),
template matching (``matching``), the result (``result``), quality metrics and curation
labels (``quality``), files (``outputs``), plots (``plots``) and the ``sort.py`` Hydra app (``app``). The package is
torch-free unless fine-tuning or a GPU asks.

Named ``sorting`` (not ``sort``) so that ``deepspike.sort``, the public function, is never shadowed.
"""
