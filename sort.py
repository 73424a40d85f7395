"""Sort a recording with the frozen DeepSpike encoder: ``python sort.py recording=PATH [out=DIR] [gt=PATH]``.

Thin Hydra entry point (configuration: ``conf/sort.yaml``); the logic lives in ``deepspike.sorting.pipeline``.
"""

from deepspike.sorting.app import main

if __name__ == "__main__":
    main()
