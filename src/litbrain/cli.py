"""The one entry point: ``litbrain <verb>``.

Training verbs (fit, validate, test, predict) are LightningCLI subcommands; the data and
release verbs are typed functions parsed by jsonargparse. Every verb takes ``--config
FILE.yaml`` (repeatable, later files override earlier ones) plus ``--key value`` overrides.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

TRAINING_VERBS = {
    "fit": "train a task (LightningCLI)",
    "validate": "run the validation loop on a checkpoint",
    "test": "run the test loop on a checkpoint",
    "predict": "run prediction on a checkpoint",
}


# ---------------------------------------------------------------- function verbs
def _function_verbs() -> dict[str, tuple[Callable[..., Any], str]]:
    # Imported lazily: `litbrain --help` should not pay for torch/lightning imports.
    from litbrain import evaluation, hub, seeg_evaluation, zero
    from litbrain.benchmarks import fmri as bench_fmri
    from litbrain.benchmarks import seeg as bench_seeg
    from litbrain.datamodules import fmri_prepare, fmri_synthetic, seeg_prepare, seeg_synthetic, targets

    fns = {
        "synthesize": fmri_synthetic.synthesize_fmri,
        "prepare": fmri_prepare.prepare_fmri,
        "synthesize-seeg": seeg_synthetic.synthesize_seeg,
        "prepare-seeg": seeg_prepare.prepare_seeg,
        "embed-images": targets.embed_images,
        "embed-captions": targets.embed_captions,
        "evaluate": evaluation.evaluate_decoder,
        "evaluate-seeg": seeg_evaluation.evaluate_seeg_from_cli,
        "export": hub.export_from_cli,
        "consolidate": zero.consolidate_from_cli,
        "estimate-memory": zero.estimate_memory,
        "push": hub.push_from_cli,
        "bench": bench_fmri.bench_fmri,
        "bench-seeg": bench_seeg.bench_seeg,
    }
    return {verb: (fn, FUNCTION_VERB_HELP[verb]) for verb, fn in fns.items()}


FUNCTION_VERB_HELP = {
    "synthesize": "write a synthetic NSD-like fMRI dataset with known ground truth",
    "prepare": "mask, z-score and shard raw NIfTI betas into a prepared dataset",
    "synthesize-seeg": "write a synthetic BIDS-iEEG word-reading dataset with its Bayes-optimal accuracy",
    "prepare-seeg": "BIDS-iEEG -> bipolar, filtered, region-selected, z-scored epochs in shards",
    "embed-images": "image-embedding targets from a frozen open_clip/timm encoder",
    "embed-captions": "caption-embedding targets from a frozen open_clip/hf text encoder",
    "evaluate": "retrieval/identification of a decoder vs ridge, oracle and chance",
    "evaluate-seeg": "sEEG word accuracy per subject: Du-IN vs no pretraining, logistic regression, oracle, chance",
    "export": "turn a checkpoint (.ckpt or ZeRO folder) into a release folder (safetensors + config.json + card)",
    "consolidate": "merge a DeepSpeed ZeRO-2/3 checkpoint folder into one fp32 .ckpt",
    "estimate-memory": "per-GPU memory of ZeRO-2/3 for a model and cluster shape (DeepSpeed's estimators)",
    "push": "upload a release folder to a Hugging Face Hub model repo",
    "bench": "fMRI benchmark: Lightning vs bare loop, loader vs step, RSS 1x vs 10x (configs/bench/fmri.yaml)",
    "bench-seeg": "sEEG benchmark: reading vs training-step epochs/s, Du-IN encoder throughput (configs/bench/seeg.yaml)",
}


def _usage() -> str:
    lines = ["usage: litbrain <verb> [--config FILE.yaml ...] [--key value ...]", "", "verbs:"]
    for verb, text in {**TRAINING_VERBS, **FUNCTION_VERB_HELP}.items():
        lines.append(f"  {verb:<15} {text}")
    lines += ["", "`litbrain <verb> --help` lists a verb's options; every run is a YAML file in configs/."]
    return "\n".join(lines)


def _fail(verb: str, err: BaseException) -> None:
    print(f"litbrain {verb}: error: {err}", file=sys.stderr)
    raise SystemExit(2)


def run_training_verb(args: list[str]) -> None:
    from litbrain.training_cli import LitbrainCLI

    # LightningCLI parses sys.argv, which must hold this verb's args: Lightning's DDP launcher
    # re-runs `sys.argv` to start the other local ranks (and it warns when given args while
    # sys.argv holds others, e.g. pytest's).
    saved, sys.argv = sys.argv, [sys.argv[0], *args]
    try:
        LitbrainCLI(args=None)
    finally:
        sys.argv = saved


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    verb, rest = argv[0], argv[1:]
    from litbrain import _cli_errors

    _cli_errors.CONFIG_FILES[:] = _cli_errors.config_files(rest)
    if verb not in TRAINING_VERBS and verb not in FUNCTION_VERB_HELP:
        print(_usage(), file=sys.stderr)
        print(f"\nlitbrain: error: unknown verb {verb!r}", file=sys.stderr)
        raise SystemExit(2)
    try:
        if verb in TRAINING_VERBS:
            run_training_verb([verb, *rest])
        else:
            from jsonargparse import auto_cli

            from litbrain._cli_errors import ConciseArgumentParser

            fn, _ = _function_verbs()[verb]
            result = auto_cli(fn, args=rest, as_positional=False, parser_class=ConciseArgumentParser, prog=f"litbrain {verb}")
            if isinstance(result, (str, Path)):
                print(result)
    except _cli_errors.known_errors() as err:
        _fail(verb, err)


if __name__ == "__main__":
    main()
