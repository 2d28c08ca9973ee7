#!/usr/bin/env python
"""The VLM token-dropping benchmark of issue 5: ``python scripts/bench_vlm_dropping.py [--config FILE.yaml] [--key value ...]``.

A thin wrapper around :func:`litbrain.benchmarks.vlm_dropping.main`; without ``--config`` it reads
``configs/bench/vlm_dropping.yaml``. Prints one table and writes it as JSON.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from litbrain.benchmarks.vlm_dropping import main

    main(sys.argv[1:])
