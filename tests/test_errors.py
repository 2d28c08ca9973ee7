"""One error base: every exception class litbrain defines derives from LitbrainError, and the CLI
prints any of them as one line (exit 2), for a bad value on each verb family."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil

import numpy as np

import lightning.pytorch  # noqa: F401  (imported outside capsys: it binds logging handlers to sys.stderr)
import litbrain.datamodules
import pytest

import litbrain
from litbrain.cli import main
from litbrain.cli.verbs import FAMILIES
from litbrain.errors import LitbrainError
from tests.helpers.fit import DEMO_CONFIG, REPO

try:  # bound to the real stdout before any capsys (see tests/test_trainer_configs.py)
    import deepspeed  # noqa: F401
except ImportError:
    pass


def _all_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(litbrain.__path__, "litbrain.")]
    names += [m.name for m in pkgutil.walk_packages(litbrain.datamodules.__path__, "litbrain.datamodules.")]
    return sorted(set(names))


def test_every_exception_class_of_the_package_derives_from_litbrain_error():
    defined = []
    for name in _all_modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                defined.append(obj)
    assert len(defined) >= 10, defined  # errors.py's kinds + the families' own
    outside = [f"{c.__module__}.{c.__qualname__}" for c in defined if not issubclass(c, LitbrainError)]
    assert outside == []


@pytest.fixture(scope="module")
def raw_3d(tmp_path_factory):
    """A raw fMRI set whose second session is a 3D NIfTI (one volume saved without its trial axis)."""
    import nibabel as nib
    import numpy as np

    from tests.helpers.fmri_rawkit import simple_spec, write_raw

    spec, stimuli = simple_spec(np.random.default_rng(0), n_sessions=2)
    raw = write_raw(tmp_path_factory.mktemp("raw3d") / "raw", {"sub-01": spec}, stimuli)
    path = next(iter(sorted((raw / "sub-01").glob("betas_session02*"))))
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header), path)
    return raw


@pytest.fixture(scope="module")
def encoding_inputs(tiny_encoding_raw, tiny_encoding_prepared, tmp_path_factory):
    """Bad inputs of the encoding family: short features, descriptions lacking ids, an unreadable image."""
    import numpy as np

    from litbrain.nn.voxel_encoder import VoxelEncoder, VoxelEncoderConfig
    from litbrain.release import save_release

    d = tmp_path_factory.mktemp("enc_bad")
    with np.load(tiny_encoding_raw / "embeddings" / "image.npz") as f:
        np.savez(d / "short.npz", ids=f["ids"][:-5], embeddings=f["embeddings"][:-5])
    lines = (tiny_encoding_raw / "descriptions.tsv").read_text().splitlines(keepends=True)
    (d / "descriptions.tsv").write_text("".join(lines[:-3]))
    (d / "images").mkdir()
    (d / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    n = int(np.load(tiny_encoding_prepared / "sub-01" / "voxel_ijk.npy").shape[0])
    release = save_release(VoxelEncoder(VoxelEncoderConfig(subjects={"sub-01": n}, feature_shape=[24], width=4,
                                                           image_encoder="timm:vit_tiny_patch16_224")), d / "release")
    return {"{encraw}": str(tiny_encoding_raw), "{encprep}": str(tiny_encoding_prepared), "{encbad}": str(d),
            "{encrelease}": str(release)}


@pytest.fixture(scope="module")
def distill_inputs(tmp_path_factory):
    """A causal-LM teacher of another vocabulary (50) and an encoder-decoder posing as a teacher."""
    from litbrain.nn.distill import CausalLm, CausalLmConfig, Seq2SeqStudent, Seq2SeqStudentConfig, tiny_gemma2
    from litbrain.release import save_release

    d = tmp_path_factory.mktemp("distill_bad")
    save_release(CausalLm(CausalLmConfig(lm=tiny_gemma2(vocab_size=50, hidden_size=16, layers=1, head_dim=8))),
                 d / "teacher50")
    save_release(Seq2SeqStudent(Seq2SeqStudentConfig(vocab_size=96, hidden_size=16, head_dim=8)), d / "seq2seq")
    return {"{distbad}": str(d)}


@pytest.fixture(scope="module")
def generation_inputs(tiny_gen_world, tmp_path_factory):
    """Bad generation inputs: captions of a stimulus without image, a pipeline folder without unet/, a tiny VAE."""
    import shutil

    from tests.helpers.generation import tiny_vae_config

    d = tmp_path_factory.mktemp("gen_bad")
    shutil.copytree(tiny_gen_world, d / "orphans")
    with open(d / "orphans" / "captions.tsv", "a") as f:
        f.write("stim77777\ta green disc nobody drew\n")
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (d / "nounet" / part).mkdir(parents=True)
    (d / "nounet" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    tiny_vae_config().build().save_pretrained(d / "vae")
    return {"{genraw}": str(tiny_gen_world), "{genbad}": str(d)}


_GEN = str(REPO / "configs/generation")

_DISTILL = ["fit", "--config", str(REPO / "configs/distill/student.yaml"), "--data.init_args.n_train", "16",
            "--data.init_args.n_val", "8", "--data.init_args.tokenizer_items", "300", "--trainer.default_root_dir",
            "{tmp}/run"]

# name -> (argv, what the one line must say); {tmp} is the test's folder, {prepared} the tiny prepared set.
CASES = {
    # fMRI
    "fmri prepare: no raw folder": (["fmri", "prepare", "--raw_dir", "/nonexistent/raw", "--out_dir", "{tmp}/prepared"],
                                    "/nonexistent/raw"),
    "fmri prepare: 3D betas": (["fmri", "prepare", "--raw_dir", "{raw3d}", "--out_dir", "{tmp}/prepared"],
                               "betas must be 4D (X,Y,Z,trials), got a 3D image"),
    "fmri prepare: wrong type": (["fmri", "prepare", "--raw_dir", "{raw3d}", "--out_dir", "{tmp}/prepared",
                                  "--val_fraction", "lots"], "val_fraction: 'lots' is not a number"),
    "fmri prepare-nsd: no NSD folder": (["fmri", "prepare-nsd", "--nsd_dir", "/nonexistent/NSD", "--out_dir",
                                         "{tmp}/prepared"], "/nonexistent/NSD"),
    "fmri synthesize-nsd: too many subjects": (["fmri", "synthesize-nsd", "--out_dir", "{tmp}/nsd", "--n_subjects", "9"],
                                               "n_subjects"),
    "fmri evaluate: no prepared set": (["fmri", "evaluate", "--data_dir", "/nonexistent/prepared", "--checkpoint",
                                        "{tmp}/x.ckpt"], "fix:"),
    "fmri evaluate-worlds: unknown world": (["fmri", "evaluate-worlds", "--worlds", "[w9]", "--out_dir", "{tmp}/worlds"],
                                            "worlds=['w9']: unknown; fix: choose from ['w1', 'w2', 'w3', 'w4']"),
    "fit before prepare": (["fit", "--config", DEMO_CONFIG, "--data.init_args.data_dir", "/nonexistent/prepared",
                            "--trainer.default_root_dir", "{tmp}/run"],
                           "prepared fMRI dataset folder not found; fix: run `litbrain fmri prepare`"),
    "fit: unknown subject": (["fit", "--config", DEMO_CONFIG, "--data.init_args.data_dir", "{prepared}",
                              "--data.init_args.subjects", "[sub-09]", "--trainer.default_root_dir", "{tmp}/run"],
                             "subject(s) ['sub-09'] not prepared"),
    "fit: wrong type on the command line": (["fit", "--config", DEMO_CONFIG, "--trainer.max_epochs", "ten"],
                                            "trainer.max_epochs: 'ten' is not an integer"),
    "fit: wrong type in a nested block": (["fit", "--config", DEMO_CONFIG, "--data.init_args.batch_size", "ninety-six"],
                                          "batch_size: 'ninety-six' is not an integer"),
    "fit: a value Lightning refuses": (["fit", "--config", DEMO_CONFIG, "--data.init_args.data_dir", "{prepared}",
                                        "--trainer.max_epochs", "-5", "--trainer.default_root_dir", "{tmp}/run"],
                                       "`max_epochs` must be a non-negative integer"),
    "fit: a misspelt trainer key in a file": (["fit", "--config", DEMO_CONFIG, "--config", "{typo}"],
                                              "unknown key 'trainer.max_epoch' in"),
    "fit: no such ckpt_path": (["fit", "--config", DEMO_CONFIG, "--data.init_args.data_dir", "{prepared}",
                                "--ckpt_path", "{tmp}/missing.ckpt", "--trainer.default_root_dir", "{tmp}/run"],
                               "ckpt_path={tmp}/missing.ckpt: no such checkpoint file"),
    "fit: a text file as ckpt_path": (["fit", "--config", DEMO_CONFIG, "--data.init_args.data_dir", "{prepared}",
                                       "--ckpt_path", "{text}", "--trainer.default_root_dir", "{tmp}/run"],
                                      "not a zip archive"),
    "export: a text file named .ckpt": (["export", "--checkpoint", "{text}", "--out", "{tmp}/release"],
                                        "not a zip archive"),
    "export: missing checkpoint": (["export", "--checkpoint", "{tmp}/missing.ckpt", "--out", "{tmp}/release"],
                                   "no such checkpoint file"),
    "consolidate: not a ZeRO folder": (["consolidate", "--checkpoint", "{tmp}", "--out", "{tmp}/full.ckpt"],
                                       "not a DeepSpeed ZeRO checkpoint folder"),
    "estimate-memory: nothing to size": (["estimate-memory"], "needs --checkpoint, or --net"),
    "push: bad repo id": (["push", "--release", "{tmp}", "--repo_id", "bad id!"], "is not a valid Hugging Face repo id"),
    "embed-images: unknown backend": (["embed-images", "--raw_dir", "{tmp}", "--encoder", "clip:ViT-L-14"],
                                      "unknown image encoder"),
    # sEEG
    "seeg prepare: no BIDS root": (["seeg", "prepare", "--bids_root", "/nonexistent/bids", "--out_dir", "{tmp}/prepared"],
                                   "/nonexistent/bids"),
    "seeg evaluate: missing checkpoint": (["seeg", "evaluate", "--checkpoint", "{tmp}/none.ckpt", "--data_dir",
                                           "/nonexistent", "--out_dir", "{tmp}/res"], "fix:"),
    "seeg fit: an fMRI set": (["fit", "--config", str(REPO / "configs/seeg/vqvae.yaml"), "--data.init_args.data_dir",
                               "{prepared}"], "not a prepared sEEG dataset"),
    "seeg fit: impossible mask ratio": (["fit", "--config", str(REPO / "configs/seeg/mae.yaml"), "--data.init_args.data_dir",
                                         "{seeg}", "--model.init_args.mask_ratio", "1.5",
                                         "--trainer.default_root_dir", "{tmp}/run"],
                                        "model.mask_ratio=1.5; fix: a value in (0, 1)"),
    "seeg synthesize: high gamma above Nyquist": (["seeg", "synthesize", "--out_dir", "{tmp}/hg", "--sfreq", "200",
                                                    "--envelope_snr", "0.1"], "must lie in (0, Nyquist"),
    "seeg fit: deconv strides vs patch": (["fit", "--config", str(REPO / "configs/seeg/authors/vqvae.yaml"),
                                           "--data.init_args.data_dir", "{seeg}", "--model.init_args.net.encoder.patch_len",
                                           "25", "--trainer.default_root_dir", "{tmp}/run"], "not patch_len 25"),
    "seeg fit: negative vq_init_after": (["fit", "--config", str(REPO / "configs/seeg/authors/vqvae.yaml"),
                                          "--data.init_args.data_dir", "{seeg}", "--model.init_args.net.vq_init_after", "-3",
                                          "--trainer.default_root_dir", "{tmp}/run"], "net.vq_init_after=-3; fix:"),
    # encoding models
    "encoding prepare: features for fewer stimuli": (["encoding", "prepare", "--raw_dir", "{encraw}", "--out_dir",
                                                      "{tmp}/prepared", "--image_embeddings", "{encbad}/short.npz"],
                                                     "no embedding for 5 stimulus id(s) of stimuli.tsv"),
    "encoding prepare: descriptions lack ids": (["encoding", "prepare", "--raw_dir", "{encraw}", "--out_dir",
                                                 "{tmp}/prepared", "--descriptions", "{encbad}/descriptions.tsv"],
                                                "no description for 3 stimulus id(s) of stimuli.tsv"),
    "encoding synthesize-responses: unreadable image": (["encoding", "synthesize-responses", "--checkpoint",
                                                         "{encrelease}", "--data_dir", "{encprep}", "--images_dir",
                                                         "{encbad}/images", "--subject", "sub-01", "--out_dir",
                                                         "{tmp}/res"], "broken.png: cannot be read as an image"),
    "encoding evaluate: missing checkpoint": (["encoding", "evaluate", "--data_dir", "{encprep}", "--models",
                                               '{"m": ["{encbad}/nothing.ckpt"]}', "--out_dir", "{tmp}/res"],
                                              "nothing.ckpt"),
    # whole-brain (WAVE)
    "wave prepare: 3D BOLD": (["wave", "prepare", "--raw_dir", "{wave3d}", "--out_dir", "{tmp}/prepared"],
                              "BOLD must be 4D (X,Y,Z,time), got a 3D image"),
    "wave prepare: events past the last volume": (["wave", "prepare", "--raw_dir", "{wavelate}", "--out_dir",
                                                   "{tmp}/prepared"], "past the run's last volume (12 volumes"),
    "wave prepare: image not in MNI space": (["wave", "prepare", "--raw_dir", "{wavenotmni}", "--out_dir",
                                              "{tmp}/prepared"], "the image is not in MNI space"),
    "wave prepare: atlas parcel outside the brain": (["wave", "prepare", "--raw_dir", "{waveok}", "--out_dir",
                                                      "{tmp}/prepared", "--atlas", "{waveatlas}"],
                                                     "1 atlas parcel(s) lie outside the brain mask"),
    "wave prepare: TR missing": (["wave", "prepare", "--raw_dir", "{wavenotr}", "--out_dir", "{tmp}/prepared"],
                                 "no repetition time in the NIfTI header"),
    "wave evaluate-seeds: no checkpoint matches": (["wave", "evaluate-seeds", "--data_dir", "{waveok}",
                                                    "--checkpoints", "[{tmp}/nothing_seed*/last.ckpt]"],
                                                   "match no file"),
    # VLM
    "vlm fit: unknown dropping method": (["fit", "--config", str(REPO / "configs/vlm/synthetic_demo.yaml"),
                                          "--model.init_args.net.dropping.method", "random"], "dropping.method"),
    "vlm bench: misspelt dropping field": (["vlm", "bench", "--config", str(REPO / "configs/bench/vlm_dropping.yaml"),
                                            "--mustdrop", '{"merge_treshold": 0.9}', "--out_json", "null"],
                                           "unknown DroppingConfig field(s) ['merge_treshold']"),
    "vlm bench-vit: window 1": (["vlm", "bench-vit", "--quick", "true", "--window", "1"], "window=1"),
    # brain -> image
    "recon evaluate: strength outside (0, 1]": (["recon", "evaluate", "--checkpoint", "{tmp}/x.ckpt", "--data_dir",
                                                 "{prepared}", "--raw_dir", "{tmp}", "--strength", "1.5"],
                                                "strength=1.5: must be in (0, 1]"),
    "recon prepare: before fmri prepare": (["recon", "prepare", "--prepared_dir", "/nonexistent/prepared", "--raw_dir",
                                            "{tmp}"], "run `litbrain fmri prepare` first"),
    # distillation
    "distill fit: vocabularies differ": (_DISTILL + ["--model.init_args.teacher", "{distbad}/teacher50"],
                                         "the teacher's vocabulary has 50 tokens but the student's has"),
    "distill fit: beta outside [0, 1]": (_DISTILL + ["--model.init_args.beta", "1.5"], "model.init_args.beta=1.5"),
    "distill fit: alpha outside [0, 1]": (_DISTILL + ["--model.init_args.alpha", "-0.1"], "model.init_args.alpha=-0.1"),
    "distill fit: a teacher that is not causal": (_DISTILL + ["--model.init_args.teacher", "{distbad}/seq2seq"],
                                                  "T5GemmaForConditionalGeneration is not a decoder-only causal LM"),
    # text-to-image generation
    "generation fit: captions of a stimulus without image": (
        ["fit", "--config", f"{_GEN}/vae.yaml", "--data.init_args.raw_dir", "{genbad}/orphans",
         "--trainer.default_root_dir", "{tmp}/run"], "1 caption id(s) have no image in stimuli.tsv (e.g. 'stim77777')"),
    "generation fit: image size not a multiple of the VAE factor": (
        ["fit", "--config", f"{_GEN}/vae.yaml", "--data.init_args.raw_dir", "{genraw}", "--data.init_args.image_size",
         "30", "--trainer.default_root_dir", "{tmp}/run"],
        "image size 30 is not a multiple of the VAE's downsampling factor 4"),
    "generation fit: UNet width is not the text encoder's": (
        ["fit", "--config", f"{_GEN}/unet.yaml", "--data.init_args.raw_dir", "{genraw}", "--model.init_args.vae",
         "{genbad}/vae", "--model.init_args.net.cross_attention_dim", "768", "--trainer.default_root_dir", "{tmp}/run"],
        "cross_attention_dim=768 but the text encoder's width is 384"),
    "generation evaluate: a pipeline folder without unet/": (
        ["generation", "evaluate", "--pipeline", "{genbad}/nounet", "--probe", "{genbad}/probe", "--raw_dir",
         "{genraw}"], "nounet: the folder has no unet/"),
    "distill fit: source longer than the student's positions": (
        _DISTILL + ["--model.init_args.net.max_positions", "32"], "longer than the student's 32 positions"),
    # GILL
    "gill evaluate: generation asked of an LM without [IMG] tokens": (
        ["gill", "evaluate", "--model", "{gillbad}/plain_lm", "--out_dir", "{tmp}/res"], "has no [IMG] tokens"),
    "gill evaluate: mapper width != the pipeline's cross-attention width": (
        ["gill", "evaluate", "--model", "{gillbad}/gill", "--pipeline", "{gillbad}/pipe32", "--out_dir", "{tmp}/res"],
        "net.mapper.out_dim=24 but pipeline="),
}


@pytest.fixture(scope="module")
def gill_inputs(tmp_path_factory):
    """A causal LM release (tokenizer without [IMG] tokens), a GILL release (mapper 24 wide), a UNet 32 wide."""
    from litbrain.datamodules.distill.synthetic import train_tokenizer
    from litbrain.nn.distill import CausalLm, CausalLmConfig
    from litbrain.nn.gill import GillModel, tiny_llama
    from litbrain.release import save_release
    from litbrain.tasks.vlm import tokenizer_files
    from tests.helpers.gill import tiny_net, tiny_pipeline

    d = tmp_path_factory.mktemp("gill_bad")
    tok = train_tokenizer(["a b c d"])
    save_release(CausalLm(CausalLmConfig(lm=tiny_llama(vocab_size=len(tok)))), d / "plain_lm",
                 files=tokenizer_files(tok))
    from litbrain.datamodules.gill import gill_tokenizer

    gill_tok = gill_tokenizer(train_tokenizer([" ".join(f"w{i}" for i in range(36))]), 40)
    save_release(GillModel(tiny_net(tiny_llama(vocab_size=40, hidden_size=16, intermediate_size=32), out_dim=24,
                                    tokens=6)), d / "gill", files=tokenizer_files(gill_tok))
    tiny_pipeline(cross_attention_dim=32).save_pretrained(d / "pipe32")
    return {"{gillbad}": str(d)}


@pytest.fixture(scope="module")
def wave_inputs(tmp_path_factory):
    """Bad whole-brain inputs, one fMRIPrep-named run each (10 mm MNI grid, 12 volumes)."""
    from tests.helpers.wave import mni_run, write_run

    d = tmp_path_factory.mktemp("wave_bad")
    ok = mni_run(d / "ok", events=[(2.0, 2.0, "s0")])
    rng = np.random.default_rng(0)
    write_run(d / "3d", rng.standard_normal((6, 6, 6)), np.diag([10.0, 10.0, 10.0, 1.0]))
    mni_run(d / "late", events=[(2.0, 2.0, "s0"), (20.0, 6.0, "s1")])
    mni_run(d / "notr", tr=None)
    shifted = np.diag([10.0, 10.0, 10.0, 1.0])
    shifted[:3, 3] = [300.0, 300.0, 300.0]
    write_run(d / "notmni", 100 + rng.standard_normal((20, 24, 19, 12)), shifted)
    atlas = d / "atlas.tsv"
    atlas.write_text("x\ty\tz\tnetwork\n-2\t-90\t2\tVisual\n0\t90\t0\tNowhere\n")
    return {"{wave3d}": str(d / "3d"), "{wavelate}": str(d / "late"), "{wavenotmni}": str(d / "notmni"),
            "{waveok}": str(ok), "{waveatlas}": str(atlas), "{wavenotr}": str(d / "notr")}


@pytest.mark.parametrize("name", list(CASES))
def test_every_bad_input_is_one_line_naming_the_cause_and_the_fix(name, tmp_path, capsys, tiny_prepared, raw_3d,
                                                                  tiny_seeg_prepared, encoding_inputs, distill_inputs,
                                                                  wave_inputs, generation_inputs, gill_inputs):
    argv, expected = CASES[name]
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_epoch: 3\n")
    text = tmp_path / "notes.ckpt"
    text.write_text("these are my notes, not a checkpoint\n")
    fill = {"{tmp}": str(tmp_path), "{prepared}": str(tiny_prepared), "{raw3d}": str(raw_3d), "{typo}": str(typo),
            "{text}": str(text), "{seeg}": str(tiny_seeg_prepared), **encoding_inputs,
            **distill_inputs, **wave_inputs, **generation_inputs, **gill_inputs}

    def sub(a: str) -> str:
        for k, v in fill.items():
            a = a.replace(k, v)
        return a

    with pytest.raises(SystemExit) as exc:
        main([sub(a) for a in argv])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("[20")]  # DeepSpeed's log
    assert exc.value.code == 2
    assert len(err) == 1 and "Traceback" not in err[0], err
    verb = " ".join(argv[:2]) if argv[0] in FAMILIES else argv[0]
    assert err[0].startswith(f"litbrain {verb}: error: "), err[0]
    assert sub(expected) in err[0] and "fix:" in err[0], err[0]
    # nothing left behind: no release, no prepared folder, no run folder (not even Lightning's config.yaml)
    assert not any((tmp_path / d).exists() for d in ("release", "prepared", "run", "res"))


def test_a_release_called_with_the_wrong_input_says_what_it_takes(tmp_path):
    import torch

    from litbrain.nn import BrainDecoder
    from litbrain.release import load_release, save_release

    folder = save_release(BrainDecoder(subjects={"sub-01": 5}, image_embedding_shape=[3], width=4, n_blocks=1),
                          tmp_path / "release")
    model = load_release(folder)
    with pytest.raises(LitbrainError, match=r"takes \{subject: \(batch, n_voxels\) tensor\}, got a Tensor; fix:"):
        model(torch.randn(2, 5))
    with pytest.raises(LitbrainError, match=r"needs a 2-D tensor .*got a 1-D tensor of shape \(5,\); fix: add the batch"):
        model({"sub-01": torch.randn(5)})
    with pytest.raises(LitbrainError, match=r"no adapter for subject 'sub-02' \(known: \['sub-01'\]\)"):
        model({"sub-02": torch.randn(2, 5)})


def test_a_killed_writer_leaves_nothing_the_next_run_keeps(tiny_raw, tmp_path):
    """kill -9 cannot clean up: the next write of the same output removes temporaries of dead processes."""
    import subprocess
    import sys

    from litbrain.datamodules import prepare_fmri

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # that process has exited: its pid is a dead writer's
    out = tmp_path / "prepared"
    stale = tmp_path / f".prepared.tmp-{pid}-0123abcd"
    (stale / "sub-01").mkdir(parents=True)
    (stale / "sub-01" / "train_brain.npy").write_bytes(b"half written")
    alive = tmp_path / f".prepared.tmp-{os.getpid()}-feedbeef"  # a live writer's work is never touched
    alive.mkdir()
    prepare_fmri(tiny_raw, out)
    assert not stale.exists() and alive.exists() and (out / "manifest.json").is_file()


def test_a_fit_that_fails_after_training_keeps_its_checkpoints(tmp_path, tiny_prepared):
    # The clean-up above is for runs that never trained; one that crashes (or is requeued by SLURM
    # after writing hpc_ckpt_N.ckpt) must keep what resumes it.
    from tests.helpers.fitproc import global_step, tiny_fit_args

    run = tmp_path / "run"
    args = tiny_fit_args(tiny_prepared, run, "--trainer.callbacks+=tests.helpers.fitproc.FailAtStep",
                         "--trainer.callbacks.init_args.step", "5", every_n_train_steps=2)
    with pytest.raises(RuntimeError, match="FailAtStep"):
        main(args)
    kept = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in kept and global_step(run / "checkpoints" / "last.ckpt") == 4, kept
    assert (run / "logs").is_dir()


def test_load_model_refuses_another_model_type_naming_both(tmp_path):
    from litbrain.nn import BrainDecoder
    from litbrain.release import load_model, save_release

    folder = save_release(BrainDecoder(subjects={"sub-01": 5}, image_embedding_shape=[3], width=4, n_blocks=1),
                          tmp_path / "release")
    with pytest.raises(LitbrainError, match=r"holds a 'fmri_decoder' model, not a 'voxel_encoder' one; fix: pass "):
        load_model(folder, "voxel_encoder", "pass checkpoints of EncodingTask runs")
    assert load_model(folder, "fmri_decoder").config.model_type == "fmri_decoder"
