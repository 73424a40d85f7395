"""Training data: WebDataset tar shards and their reader (``shards``), the pretraining corpus builder and its
Hydra app (``corpus``), the fine-tuning corpus of a lab's own recordings (``finetune_corpus``), window samples
for validation (``sample``), the rank/worker-aware stream (``stream``) and its batching loader (``loader``).
"""
