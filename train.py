"""Pretrain a spike autoencoder: ``python train.py [hydra overrides]`` (config: conf/train.yaml).

All logic lives in ``deepspike.model.train``; this file only runs the Hydra app (same as ``deepspike-train``).
"""

from deepspike.model.train import main

if __name__ == "__main__":
    main()
