"""The model: networks (``nets``), pretext transforms (``pretext``), the loss (``objective``), the Lightning
module and data modules (``module``), the training app (``train``) and its callbacks (``callbacks``), the
training-time collapse metric (``collapse``), encoder artifacts (``export``; torch-free loading and CPU inference
in ``inference``), fine-tuning lineage (``lineage``) and in-memory fine-tuning on a recording (``finetune``).

Importing this package imports nothing; only ``inference`` is used by the torch-free sort path.
"""
