"""The verb table: every ``litbrain`` command, by one naming rule (tested against the parsers).

* Verbs that work on any family's runs and files are top-level: ``litbrain fit | validate | test |
  predict`` (LightningCLI; the task in the config says which family), ``export``, ``consolidate``,
  ``push``, ``estimate-memory``, ``embed-images``, ``embed-captions``.
* Verbs tied to one family's data are ``litbrain <family> <verb>``, with the same verb names in
  every family: ``synthesize`` (write the family's synthetic world), ``prepare`` (raw files ->
  shards), ``evaluate`` (the comparison table), ``bench`` (the benchmark), e.g.
  ``litbrain seeg prepare --config configs/seeg/prepare_demo.yaml``.
* A variant of one of those verbs for another on-disk format or world is ``<verb>-<what>``:
  ``litbrain fmri prepare-nsd`` reads the Natural Scenes Dataset in its own layout,
  ``fmri synthesize-nsd`` writes a miniature one, ``vlm bench-vit`` benchmarks the ViT alone.
* Earlier names stay as aliases (``prepare-seeg`` = ``seeg prepare``).

A family registers its verbs with one entry in :data:`FAMILIES`. Targets are ``"module:function"``
strings, imported only when the verb runs, so ``litbrain --help`` imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALIASES", "FAMILIES", "SHARED", "TRAINING", "Verb", "resolve", "usage"]


@dataclass(frozen=True)
class Verb:
    target: str  # "module:function" (jsonargparse auto_cli) or "lightning" (LightningCLI subcommand)
    help: str


TRAINING = {
    "fit": Verb("lightning", "train a task (LightningCLI; any family)"),
    "validate": Verb("lightning", "run the validation loop on a checkpoint"),
    "test": Verb("lightning", "run the test loop on a checkpoint"),
    "predict": Verb("lightning", "run prediction on a checkpoint"),
}

SHARED = {
    **TRAINING,
    "export": Verb("litbrain.release.export:export_from_cli",
                   "turn a checkpoint (.ckpt or ZeRO folder) into a release (safetensors + config.json + card)"),
    "consolidate": Verb("litbrain.release.export:consolidate_from_cli",
                        "merge a DeepSpeed ZeRO-2/3 checkpoint folder into one fp32 .ckpt"),
    "push": Verb("litbrain.release.push:push_from_cli", "upload a release folder to a Hugging Face Hub model repo"),
    "estimate-memory": Verb("litbrain.release.memory:estimate_memory",
                            "per-GPU memory of ZeRO-2/3 for any model and cluster shape (DeepSpeed's estimators)"),
    "embed-images": Verb("litbrain.datamodules.targets:embed_images",
                         "image-embedding targets from a frozen open_clip/timm encoder, or a pipeline's VAE latents"),
    "embed-captions": Verb("litbrain.datamodules.targets:embed_captions",
                           "caption-embedding targets from a frozen open_clip/hf text encoder, or a pipeline's "
                           "77 x D conditioning"),
}

FAMILIES: dict[str, dict[str, Verb]] = {
    "fmri": {
        "synthesize": Verb("litbrain.datamodules.fmri.synthetic:synthesize_fmri",
                           "write a synthetic NSD-like fMRI dataset with known ground truth"),
        "prepare": Verb("litbrain.datamodules.fmri.prepare:prepare_fmri",
                        "mask, z-score and shard raw NIfTI betas into a prepared dataset"),
        "evaluate": Verb("litbrain.evaluation.fmri:evaluate_decoder",
                         "retrieval/identification of a decoder vs ridge, oracle and chance"),
        "evaluate-worlds": Verb("litbrain.cli.fmri_worlds:evaluate_worlds",
                                "fit + score a decoder recipe on four synthetic worlds other than the demo's (table)"),
        "bench": Verb("litbrain.benchmarks.fmri:bench_fmri",
                      "Lightning vs bare loop, loader vs step, RSS 1x vs 10x (configs/bench/fmri.yaml)"),
        "bench-step": Verb("litbrain.benchmarks.fmri:bench_fmri_step",
                           "the training step vs the matmul peak: fp32/bf16, optimisers, threads (configs/bench/fmri_step.yaml)"),
        "synthesize-nsd": Verb("litbrain.datamodules.fmri.nsd_synthetic:synthesize_nsd",
                               "write a miniature Natural Scenes Dataset in NSD's own files, a known image per trial"),
        "prepare-nsd": Verb("litbrain.datamodules.fmri.nsd:prepare_nsd",
                            "read NSD as distributed (expdesign, betas, ROI, ncsnr, imgBrick, COCO) into prepare's raw "
                            "layout"),
        "bench-nsd": Verb("litbrain.benchmarks.nsd:bench_nsd",
                          "peak RSS of prepare-nsd + prepare at 2 vs 8 NSD sessions (configs/bench/nsd.yaml)"),
    },
    "seeg": {
        "synthesize": Verb("litbrain.datamodules.seeg.synthetic:synthesize_seeg",
                           "write a synthetic BIDS-iEEG word-reading dataset with its Bayes-optimal accuracy"),
        "prepare": Verb("litbrain.datamodules.seeg.prepare:prepare_seeg",
                        "BIDS-iEEG -> bipolar, filtered, region-selected, z-scored epochs in shards"),
        "evaluate": Verb("litbrain.evaluation.seeg:evaluate_seeg_from_cli",
                         "word accuracy per subject: Du-IN vs no pretraining, logistic regression, oracle, chance"),
        "bench": Verb("litbrain.benchmarks.seeg:bench_seeg",
                      "reading vs training-step epochs/s, Du-IN encoder throughput (configs/bench/seeg.yaml)"),
    },
    "encoding": {
        "synthesize": Verb("litbrain.datamodules.encoding.synthetic:synthesize_encoding",
                           "write a synthetic encoding world: fMRI with repeats, descriptions, ROI labels, true forward model"),
        "prepare": Verb("litbrain.datamodules.encoding.prepare:prepare_encoding",
                        "fmri prepare + description targets, single trials of repeats (noise ceiling), ROI labels"),
        "evaluate": Verb("litbrain.evaluation.encoding:evaluate_encoding",
                         "noise-normalised voxel scores: encoding models vs himalaya ridge, banded ridge, oracle"),
        "synthesize-responses": Verb("litbrain.evaluation.encoding:synthesize_responses",
                                     "in silico: a trained encoding model's predicted responses to a folder of images, "
                                     "one NIfTI per image"),
    },
    "wave": {
        "synthesize": Verb("litbrain.datamodules.wave.synthetic:synthesize_wave",
                           "write a synthetic whole-brain fMRIPrep-style world whose networks carry known information"),
        "prepare": Verb("litbrain.datamodules.wave.prepare:prepare_wave",
                        "BIDS derivatives -> nilearn sphere parcels (confounds, detrend, z-score) in per-run shards"),
        "evaluate": Verb("litbrain.evaluation.wave:evaluate_wave",
                         "retrieval vs ridge, oracle and chance; network ablation (zeroed / keep-only) and its figure"),
        "evaluate-seeds": Verb("litbrain.evaluation.wave:compare_wave",
                        "test top-1 of several runs (checkpoint globs), mean +- s.d. over seeds per group, oracle, chance"),
    },
    "vlm": {
        "bench": Verb("litbrain.benchmarks.vlm_dropping:bench_vlm_dropping",
                      "accuracy, tokens and latency of dense/ToMe/FastV/MustDrop (configs/bench/vlm_dropping.yaml)"),
        "bench-vit": Verb("litbrain.benchmarks.vit_dropping:bench_vit_dropping",
                          "ViT images/s dense vs MustDrop stage 1 vs ToMe (configs/bench/vit_dropping.yaml)"),
        "bench-lm": Verb("litbrain.benchmarks.vlm_dropping:bench_lm_loop",
                         "litbrain's LM decode loop vs Hugging Face generate: first token, tokens/s (configs/bench/lm_loop.yaml)"),
    },
    "recon": {
        "prepare": Verb("litbrain.datamodules.recon.datamodule:prepare_recon",
                        "align a pipeline's VAE latents + caption conditioning (embed-images/-captions) to a prepared set"),
        "synthesize-images": Verb("litbrain.evaluation.reconstruction:reconstruct",
                                  "fMRI -> blurry image (VAE) -> img2img from it on the predicted conditioning: PNGs + grid"),
        "evaluate": Verb("litbrain.evaluation.reconstruction:evaluate_reconstruction",
                         "the MindEye table: PixCorr, SSIM, 2-way id, probe attributes, retrieval vs ridge, oracle, chance"),
    },
    "generation": {
        "synthesize": Verb("litbrain.datamodules.fmri.synthetic:synthesize_fmri",
                           "write the stimulus world (images, captions, true attributes): fmri synthesize's world"),
        "evaluate": Verb("litbrain.evaluation.generation:evaluate_generation",
                         "generate for held-out captions: probe attribute accuracy vs real and chance, probe FD, grid"),
        "prepare-pipeline": Verb("litbrain.evaluation.generation:export_pipeline",
                                "the diffusers pipeline folder of a UNet checkpoint (e.g. last.ckpt of an unfinished run)"),
        "bench": Verb("litbrain.benchmarks.generation:bench_generation",
                      "UNet training samples/s and seconds per generated image at 25 steps "
                      "(configs/bench/generation.yaml)"),
    },
    "distill": {
        "evaluate": Verb("litbrain.evaluation.distill:evaluate_distill",
                         "exact match, token accuracy, teacher agreement, perplexity: teacher vs KD / CE students"),
        "bench": Verb("litbrain.benchmarks.distill:bench_distill",
                      "first-token latency and decode tok/s: encoder-decoder vs decoder-only vs teacher "
                      "(configs/bench/distill.yaml)"),
    },
    "gill": {
        "synthesize": Verb("litbrain.datamodules.fmri.synthetic:synthesize_fmri",
                           "write GILL's world: the fMRI stimulus world's images, captions and image features (64 px)"),
        "evaluate": Verb("litbrain.evaluation.gill:evaluate_gill",
                         "GILL on held-out prompts: mapper distance/cosine, decision accuracy, R@1 vs chance, "
                         "generated-image attribute accuracy vs the pipeline from the prompt, figure"),
        "bench": Verb("litbrain.benchmarks.gill:bench_gill",
                      "GILL training steps/s and seconds per generated image at 25 steps (configs/bench/gill.yaml)"),
    },
}

# Earlier verb names, kept working.
ALIASES: dict[str, tuple[str, str]] = {
    "synthesize": ("fmri", "synthesize"),
    "prepare": ("fmri", "prepare"),
    "evaluate": ("fmri", "evaluate"),
    "bench": ("fmri", "bench"),
    "synthesize-seeg": ("seeg", "synthesize"),
    "prepare-seeg": ("seeg", "prepare"),
    "evaluate-seeg": ("seeg", "evaluate"),
    "bench-seeg": ("seeg", "bench"),
}

FAMILY_HELP = {
    "fmri": "fMRI decoding (MindEye2 / STTM): synthetic NSD-like world, prepare, evaluate, bench; NSD's own files",
    "seeg": "sEEG speech decoding (Du-IN): synthetic BIDS-iEEG world, prepare, evaluate, bench",
    "encoding": "encoding models image -> voxels (LLM-VEM): synthetic world, prepare, evaluate, in-silico responses",
    "wave": "whole-brain fMRI foundation encoder (WAVE): synthetic BIDS world, nilearn parcels, ablation maps",
    "vlm": "vision-language models with vision-token dropping (MustDrop, ToMe, FastV): bench, bench-vit",
    "recon": "brain -> image (MindEye2's low-/high-level pathways) through a diffusers img2img pipeline: prepare, "
             "synthesize-images (the reconstructions), evaluate (fit: configs/recon/demo.yaml)",
    "generation": "text-to-image latent diffusion through diffusers (VAE, UNet, MiniLM or SD v1.5) and the world probe: "
                  "synthesize, evaluate, bench",
    "distill": "distillation of a decoder-only LM into an encoder-decoder student (Return of the Encoder): "
               "evaluate, bench (export --hf true: Hugging Face format)",
    "gill": "GILL: a frozen LM that answers with images ([IMG] tokens, mapper, retrieve-or-generate): synthesize, "
            "evaluate, bench",
}


def resolve(argv: list[str]) -> tuple[str, Verb, list[str]] | None:
    """``(name, verb, rest of argv)`` for a command line, or None when it names no verb."""
    if not argv:
        return None
    first, rest = argv[0], argv[1:]
    if first in SHARED:
        return first, SHARED[first], rest
    if first in FAMILIES:
        if rest and rest[0] in FAMILIES[first]:
            return f"{first} {rest[0]}", FAMILIES[first][rest[0]], rest[1:]
        return None
    if first in ALIASES:
        family, verb = ALIASES[first]
        return f"{family} {verb}", FAMILIES[family][verb], rest
    return None


def usage(family: str | None = None) -> str:
    if family is not None:
        lines = [f"usage: litbrain {family} <verb> [--config FILE.yaml ...] [--key value ...]", "",
                 f"{FAMILY_HELP.get(family, family)}", "", "verbs:"]
        lines += [f"  {v:<15} {verb.help}" for v, verb in FAMILIES[family].items()]
        return "\n".join(lines)
    lines = ["usage: litbrain <verb> | litbrain <family> <verb>  [--config FILE.yaml ...] [--key value ...]", "",
             "verbs (any family):"]
    lines += [f"  {v:<17} {verb.help}" for v, verb in SHARED.items()]
    lines += ["", "families (`litbrain <family> --help` lists their verbs):"]
    lines += [f"  {f:<17} {FAMILY_HELP.get(f, '')}" for f in FAMILIES]
    lines += ["", "aliases: " + ", ".join(f"{a} = {' '.join(t)}" for a, t in ALIASES.items()),
              "", "`litbrain <verb> --help` lists a verb's options; every run is a YAML file in configs/."]
    return "\n".join(lines)
