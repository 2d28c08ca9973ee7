# litbrain: `make demo` and `make test` are the quickstart; both create/refresh .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Tests and the demo run on CPU with one thread per process, chosen by measurement on this 2-core
# machine: the demo's fit at 1 thread takes 0.95x the wall time of 2 threads when the machine is
# quiet and 0.39x when another job shares it (OpenMP barriers stall); README "Threads" has the figures.
export OMP_NUM_THREADS ?= 1

.PHONY: install demo nsd-demo seeg-demo seeg-few-labels seeg-hg-demo encoding-demo distill-demo bench-distill gill-demo bench-gill wave-demo generation-demo bench-generation recon-demo fmri-worlds test test-fast bench bench-nsd bench-seeg bench-vit bench-vlm \
  clean-demo

install: $(STAMP)

# Re-installs only when pyproject.toml changes, so repeated runs are quick. DeepSpeed is installed
# without building its CUDA ops (DS_BUILD_OPS=0): CPU tests check its configs and ZeRO conversions.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,deepspeed]' 2>&1 \
	  | grep -v "^WARNING: Location" || true
	@DS_ACCELERATOR=cpu $(BIN)/python -c "import litbrain, litbrain.datamodules, torch, lightning, deepspeed" \
	  || { echo "litbrain install failed; see the pip output above"; exit 1; }
	@touch $(STAMP)

DEMO := data/demo
demo: $(STAMP)
	$(BIN)/litbrain fmri synthesize --config configs/data/synthetic_demo.yaml
	$(BIN)/litbrain fmri prepare --config configs/data/prepare_demo.yaml
	$(BIN)/litbrain fit --config configs/fmri/demo.yaml
	$(BIN)/litbrain fmri evaluate --config configs/fmri/evaluate_demo.yaml
	$(BIN)/litbrain export --config configs/fmri/export_demo.yaml
	@echo "release folder: runs/demo/release (load it with litbrain.release.load_release)"

# NSD in its own layout: a miniature NSD (NSD's files and formats) -> prepare-nsd -> targets from tiny
# local encoders -> prepare -> the decoder -> retrieval on the shared images. Real NSD: README.
# The fMRI recipe on four synthetic worlds other than the demo's (demo size; ~6 min a world on 2 busy
# cores): decoder / ridge / oracle table. RECIPE=configs/fmri/demo.yaml scores the MLP-adapter recipe.
RECIPE ?= configs/fmri/demo_ridge.yaml
fmri-worlds: $(STAMP)
	$(BIN)/litbrain fmri evaluate-worlds --recipe $(RECIPE) --out_dir runs/fmri_worlds

nsd-demo: $(STAMP)
	$(BIN)/litbrain fmri synthesize-nsd --config configs/data/synthetic_nsd_demo.yaml
	$(BIN)/litbrain fmri prepare-nsd --config configs/data/prepare_nsd_demo.yaml
	$(BIN)/litbrain embed-images --config configs/data/embed_images_nsd_demo.yaml
	$(BIN)/litbrain embed-captions --config configs/data/embed_captions_nsd_demo.yaml
	$(BIN)/litbrain fmri prepare --config configs/data/prepare_nsd_demo_shards.yaml
	$(BIN)/litbrain fit --config configs/fmri/nsd_demo.yaml
	$(BIN)/litbrain fmri evaluate --config configs/fmri/evaluate_nsd_demo.yaml

# Du-IN's three stages on synthetic BIDS-iEEG, plus the no-pretraining baseline, then the table.
# Encoding models (LLM-VEM) on the synthetic world: lambda = 0, 0.1 and 0.3 (chosen on val), three seeds each, against
# himalaya ridge, banded ridge and the oracle; then sub-03 as one more readout on 10% of its trials vs scratch.
ENC := runs/encoding_demo
encoding-demo: $(STAMP)
	$(BIN)/litbrain encoding synthesize --config configs/encoding/synthetic_demo.yaml
	$(BIN)/litbrain encoding prepare --config configs/encoding/prepare_demo.yaml
	for s in 0 1 2; do for w in 0 0.1 0.3; do \
	  $(BIN)/litbrain fit --config configs/encoding/demo.yaml --seed_everything $$s \
	    --model.init_args.alignment_weight $$w --trainer.default_root_dir $(ENC)/lambda$${w}_seed$$s || exit 1; \
	done; done
	$(BIN)/litbrain encoding evaluate --config configs/encoding/evaluate_demo.yaml
	$(BIN)/litbrain fit --config configs/encoding/new_subject.yaml
	$(BIN)/litbrain fit --config configs/encoding/new_subject.yaml --model.init_args.init_from null \
	  --model.init_args.freeze none --trainer.default_root_dir $(ENC)/new_subject_scratch
	$(BIN)/litbrain encoding evaluate --config configs/encoding/evaluate_new_subject.yaml

# Whole-brain foundation encoder (WAVE) on the synthetic fMRIPrep-style world: pretraining on sub-01/02, contrastive
# fine-tuning from it and from scratch (all labels, 60 epochs; 20% of the training runs = 1 batch an epoch, 300 epochs;
# 3 seeds), then retrieval vs ridge /
# oracle / chance with the network ablation map, sub-03 zero-shot, and the from-scratch model's table.
WAVE := runs/wave_demo
wave-demo: $(STAMP)
	$(BIN)/litbrain wave synthesize --config configs/wave/synthetic_demo.yaml
	$(BIN)/litbrain wave prepare --config configs/wave/prepare_demo.yaml
	$(BIN)/litbrain fit --config configs/wave/pretrain_demo.yaml
	for s in 0 1 2; do for fe in 1.0:60 0.2:300; do f=$${fe%:*}; e=$${fe#*:}; \
	  $(BIN)/litbrain fit --config configs/wave/contrastive_demo.yaml --seed_everything $$s --trainer.max_epochs $$e \
	    --data.init_args.label_fraction $$f --trainer.default_root_dir $(WAVE)/labels$${f}_pretrained_seed$$s || exit 1; \
	  $(BIN)/litbrain fit --config configs/wave/contrastive_demo.yaml --seed_everything $$s --trainer.max_epochs $$e \
	    --model.init_args.init_from null --data.init_args.label_fraction $$f \
	    --trainer.default_root_dir $(WAVE)/labels$${f}_scratch_seed$$s || exit 1; \
	done; done
	$(BIN)/litbrain wave evaluate --config configs/wave/evaluate_demo.yaml \
	  --checkpoint $(WAVE)/labels1.0_pretrained_seed0/checkpoints/last.ckpt
	$(BIN)/litbrain wave evaluate --config configs/wave/evaluate_demo.yaml --subjects '[sub-03]' \
	  --checkpoint $(WAVE)/labels1.0_pretrained_seed0/checkpoints/last.ckpt --out_dir $(WAVE)/results_sub-03
	$(BIN)/litbrain wave evaluate --config configs/wave/evaluate_demo.yaml \
	  --checkpoint $(WAVE)/labels1.0_scratch_seed0/checkpoints/last.ckpt --out_dir $(WAVE)/results_scratch
	$(BIN)/litbrain wave evaluate-seeds --data_dir data/wave_demo/prepared --raw_dir data/wave_demo/raw \
	  --subjects '[sub-01, sub-02]' --checkpoints '[$(WAVE)/labels*_seed*/checkpoints/last.ckpt]' --out $(WAVE)/compare.json

# Text-to-image latent diffusion on the 64-px stimulus world (~45 min on 2 quiet CPU cores): the world, a diffusers
# VAE (+ its decoder fine-tuned), the world probe, the UNet (frozen VAE + frozen MiniLM), then held-out captions -> images judged by the probe.
generation-demo: $(STAMP)
	$(BIN)/litbrain generation synthesize --config configs/generation/synthetic_demo.yaml
	$(BIN)/litbrain fit --config configs/generation/vae.yaml
	$(BIN)/litbrain fit --config configs/generation/vae_decoder.yaml
	$(BIN)/litbrain fit --config configs/generation/probe.yaml
	$(BIN)/litbrain fit --config configs/generation/unet.yaml
	$(BIN)/litbrain fit --config configs/generation/unet_finetune.yaml
	$(BIN)/litbrain generation evaluate --config configs/generation/evaluate_demo.yaml
	@echo "pipeline folder: runs/generation_demo/pipeline_finetuned (diffusers StableDiffusionPipeline); figure: runs/generation_demo/results/grid.png"

bench-generation: $(STAMP)
	$(BIN)/litbrain generation bench --config configs/bench/generation.yaml

seeg-demo: $(STAMP)
	$(BIN)/litbrain seeg synthesize --config configs/seeg/synthetic_demo.yaml
	$(BIN)/litbrain seeg prepare --config configs/seeg/prepare_demo.yaml
	$(BIN)/litbrain fit --config configs/seeg/vqvae.yaml
	$(BIN)/litbrain fit --config configs/seeg/mae.yaml
	$(BIN)/litbrain fit --config configs/seeg/classify.yaml
	$(BIN)/litbrain fit --config configs/seeg/scratch.yaml
	$(BIN)/litbrain seeg evaluate --config configs/seeg/evaluate_demo.yaml
	$(BIN)/litbrain export --checkpoint runs/seeg_demo/classify/checkpoints/best.ckpt --out runs/seeg_demo/release \
	  --metrics runs/seeg_demo/results/metrics.json --overwrite true
	@echo "confusion matrices: runs/seeg_demo/results/confusion.png; release: runs/seeg_demo/release"

# Du-IN's claim: with labels for 20% of the trials, pretraining (stages 1-2 on every trial) beats
# the same network from scratch. Re-uses seeg-demo's stage-2 checkpoint; 30 epochs each.
RUN_DIR = --trainer.default_root_dir $(1)
FEW := --data.init_args.label_fraction 0.2 --trainer.max_epochs 30
seeg-few-labels: $(STAMP)
	@test -f runs/seeg_demo/mae/checkpoints/last.ckpt || { echo "run 'make seeg-demo' first"; exit 1; }
	$(BIN)/litbrain fit --config configs/seeg/classify.yaml $(FEW) $(call RUN_DIR,runs/seeg_demo/classify_20)
	$(BIN)/litbrain fit --config configs/seeg/scratch.yaml $(FEW) $(call RUN_DIR,runs/seeg_demo/scratch_20)
	$(BIN)/litbrain seeg evaluate --config configs/seeg/evaluate_few_labels.yaml

# Du-IN as its authors built it (configs/seeg/authors/) on the high-gamma world: words in envelopes
# with random carrier phase and onset jitter. Three stages, the no-pretraining baseline, the table,
# then the same at 20% labels.
HG_FEW := --data.init_args.label_fraction 0.2 --trainer.max_epochs 40
seeg-hg-demo: $(STAMP)
	$(BIN)/litbrain seeg synthesize --config configs/seeg/authors/synthetic_hg.yaml
	$(BIN)/litbrain seeg prepare --config configs/seeg/authors/prepare_hg.yaml
	$(BIN)/litbrain fit --config configs/seeg/authors/vqvae.yaml
	$(BIN)/litbrain fit --config configs/seeg/authors/mae.yaml
	$(BIN)/litbrain fit --config configs/seeg/authors/classify.yaml
	$(BIN)/litbrain fit --config configs/seeg/authors/scratch.yaml
	$(BIN)/litbrain seeg evaluate --config configs/seeg/authors/evaluate.yaml
	$(BIN)/litbrain fit --config configs/seeg/authors/classify.yaml $(HG_FEW) $(call RUN_DIR,runs/seeg_hg/classify_20)
	$(BIN)/litbrain fit --config configs/seeg/authors/scratch.yaml $(HG_FEW) $(call RUN_DIR,runs/seeg_hg/scratch_20)
	$(BIN)/litbrain seeg evaluate --config configs/seeg/authors/evaluate_few_labels.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu" --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu and not slow and not slurm"

bench: $(STAMP)
	$(BIN)/litbrain fmri bench --config configs/bench/fmri.yaml

bench-nsd: $(STAMP)
	$(BIN)/litbrain fmri bench-nsd --config configs/bench/nsd.yaml

bench-seeg: $(STAMP)
	$(BIN)/litbrain seeg bench --config configs/bench/seeg.yaml

bench-vit: $(STAMP)
	$(BIN)/litbrain vlm bench-vit --config configs/bench/vit_dropping.yaml

bench-vlm: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/litbrain vlm bench --config configs/bench/vlm_dropping.yaml

clean-demo:
	rm -rf $(DEMO) runs/demo data/seeg_demo runs/seeg_demo data/nsd_demo runs/nsd_demo

# Distillation (Return of the Encoder) on the fact-lookup world, CPU: the tiny teacher, then the
# encoder-decoder and decoder-only students with KD and with CE only, one run per seed (DISTILL_SEEDS;
# seed 0 in <row>/, seed s in <row>_s<s>/, as configs/distill/evaluate_demo.yaml lists them), then the table.
DIS := runs/distill_demo
DISTILL_SEEDS ?= 0 1 2
distill-demo: $(STAMP)
	$(BIN)/litbrain fit --config configs/distill/teacher.yaml
	for s in $(DISTILL_SEEDS); do \
	  sfx=$$( [ $$s = 0 ] || echo _s$$s ); \
	  $(BIN)/litbrain fit --config configs/distill/student.yaml --seed_everything $$s \
	    --trainer.default_root_dir $(DIS)/kd_seq2seq$$sfx && \
	  $(BIN)/litbrain fit --config configs/distill/student.yaml --seed_everything $$s --model.init_args.alpha 0 \
	    --model.init_args.teacher null --trainer.default_root_dir $(DIS)/ce_seq2seq$$sfx && \
	  $(BIN)/litbrain fit --config configs/distill/decoder_student.yaml --seed_everything $$s \
	    --trainer.default_root_dir $(DIS)/kd_decoder$$sfx && \
	  $(BIN)/litbrain fit --config configs/distill/decoder_student.yaml --seed_everything $$s --model.init_args.alpha 0 \
	    --model.init_args.teacher null --trainer.default_root_dir $(DIS)/ce_decoder$$sfx || exit 1; \
	done
	$(BIN)/litbrain distill evaluate --config configs/distill/evaluate_demo.yaml
	$(BIN)/litbrain export --hf true --checkpoint $(DIS)/kd_seq2seq/checkpoints/best.ckpt --out $(DIS)/kd_seq2seq_hf --overwrite true

# Brain -> image (MindEye2's two pathways) through the generation demo's pipeline, VAE and probe
# (`make generation-demo` makes them when runs/generation_demo/pipeline is missing). Prints the MindEye table.
REC := runs/recon_demo
GEN_PIPELINE ?= runs/generation_demo/pipeline
GEN_PROBE ?= runs/generation_demo/probe_release
recon-demo: $(STAMP)
	@test -f $(GEN_PIPELINE)/model_index.json -a -f $(GEN_PROBE)/config.json || $(MAKE) generation-demo
	$(BIN)/litbrain fmri synthesize --config configs/recon/synthetic_demo.yaml
	$(BIN)/litbrain fmri prepare --config configs/recon/prepare_demo.yaml
	$(BIN)/litbrain embed-images --config configs/recon/embed_latents_demo.yaml --encoder $(GEN_PIPELINE)
	$(BIN)/litbrain embed-captions --config configs/recon/embed_conditioning_demo.yaml --encoder $(GEN_PIPELINE)
	$(BIN)/litbrain recon prepare --config configs/recon/prepare_recon_demo.yaml
	$(BIN)/litbrain fit --config configs/recon/demo.yaml
	$(BIN)/litbrain export --config configs/recon/export_demo.yaml
	$(BIN)/litbrain fit --config configs/recon/new_subject_demo.yaml
	$(BIN)/litbrain recon synthesize-images --config configs/recon/reconstruct_demo.yaml --pipeline $(GEN_PIPELINE)
	$(BIN)/litbrain recon evaluate --config configs/recon/evaluate_demo.yaml --pipeline $(GEN_PIPELINE) --probe $(GEN_PROBE)

bench-distill: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/litbrain distill bench --config configs/bench/distill.yaml
	OMP_NUM_THREADS=1 $(BIN)/litbrain distill bench --config configs/bench/distill_wide.yaml

# GILL on the synthetic world (~25 min CPU): world -> causal LM on its text (HF folder) -> GILL on the
# frozen LM -> release -> evaluate (table + figure). Generation rows need the world pipeline and probe
# (the generation family's): by default the fine-tuned pipeline and probe of `make generation-demo` when
# they exist (else null: no generation rows); or GILL_PIPELINE=<folder> GILL_PROBE=<release> make gill-demo.
GILL := runs/gill_demo
GEN_DEMO := runs/generation_demo
GILL_PIPELINE ?= $(if $(wildcard $(GEN_DEMO)/pipeline_finetuned/model_index.json),$(GEN_DEMO)/pipeline_finetuned,null)
GILL_PROBE ?= $(if $(wildcard $(GEN_DEMO)/probe_release/config.json),$(GEN_DEMO)/probe_release,null)
gill-demo: $(STAMP)
	$(BIN)/litbrain gill synthesize --config configs/gill/world.yaml
	$(BIN)/litbrain fit --config configs/gill/lm.yaml
	$(BIN)/litbrain export --hf true --checkpoint $(GILL)/lm/checkpoints/best.ckpt --out $(GILL)/lm_hf --overwrite true
	$(BIN)/litbrain fit --config configs/gill/gill.yaml --model.init_args.net.pipeline $(GILL_PIPELINE)
	$(BIN)/litbrain export --checkpoint $(GILL)/gill/checkpoints/best.ckpt --out $(GILL)/release --overwrite true
	$(BIN)/litbrain gill evaluate --config configs/gill/evaluate_demo.yaml --pipeline $(GILL_PIPELINE) --probe $(GILL_PROBE)

bench-gill: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/litbrain gill bench --config configs/bench/gill.yaml --pipeline $(GILL_PIPELINE)
