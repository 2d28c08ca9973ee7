#!/usr/bin/env python
"""The ViT token-dropping benchmark of issue 5: ``python scripts/bench_vit_dropping.py [--quick] [--img-size 240] [--window 3] ...``.

A thin wrapper around :func:`litbrain.benchmarks.vit_dropping.main`: timm ViT-B/16 (random
init) at 240 px (15x15 patch grid) on CPU, images/s dense vs MustDrop stage 1 (3x3 windows,
25% budget) vs ToMe at the token count MustDrop ends with, one table.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from litbrain.benchmarks.vit_dropping import main

    main(sys.argv[1:])
