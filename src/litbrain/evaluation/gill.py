"""GILL's evaluation and inference: retrieve-or-generate answers from a frozen LM, and the table of the issue.

:class:`GillInference` answers prompts as GILL does: greedy decoding through the frozen LM; once
it produces [IMG0], [IMG1..7] are forced; the decision head on the [IMG0] state picks retrieval
(top-1 of the bank by the retrieval head) or generation (the mapper's ``(77, D)`` output as
``prompt_embeds`` of the diffusers pipeline, ``negative_prompt_embeds`` = the text encoder's
embedding of ``""``, ``guidance_scale``, ``num_inference_steps``).

:func:`evaluate_gill` (``litbrain gill evaluate``) prints, on held-out prompts never seen in training:

* the mapper's per-token distance and cosine to the text encoder's own embedding of the prompt;
* decision-head accuracy (greedy inference path: a prompt that yields no [IMG0] counts as wrong;
  and teacher-forced: the [IMG] tokens appended as in training) beside the majority baseline;
* retrieval R@1 among the 100 bank images beside chance (1 %), teacher-forced and greedy, and the
  share that retrieves an image of the prompt's composition;
* with a pipeline and a world probe: the probe's attribute accuracy of GILL's generated images vs
  the same pipeline conditioned on the text encoder's embedding of the prompt, and their ratio;
* a figure: prompts x (pipeline from the prompt, GILL generation, GILL retrieval).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from litbrain.errors import ConfigError
from litbrain.nn.generation import generate_from_embeddings, load_pipeline
from litbrain.nn.gill import GillModel, check_cross_attention_width
from litbrain.utils.io import atomic_write_text

__all__ = ["GillInference", "calibrate_img_logit_scale", "check_img_tokens", "evaluate_gill", "generation_sample",
           "load_gill"]


def check_img_tokens(tokenizer: Any, n: int = 8, source: str = "model") -> list[int]:
    """The ids of ``[IMG0..n-1]`` in ``tokenizer``; a clear error for an LM that has none (generation needs them)."""
    names = [f"[IMG{i}]" for i in range(n)]
    vocab = tokenizer.get_vocab()
    lacking = [t for t in names if t not in vocab]
    if lacking:
        raise ConfigError(f"{source}: its LM has no [IMG] tokens ({lacking[0]} is not in its {len(vocab)}-token "
                          f"vocabulary), so it cannot produce images; fix: train GILL on it (configs/gill/gill.yaml) "
                          f"and use that GILL release")
    return [int(vocab[t]) for t in names]


def load_gill(path: str | os.PathLike) -> tuple[GillModel, Any]:
    """A GILL release or checkpoint and its tokenizer (with the [IMG] tokens)."""
    from litbrain.release import load_tokenizer
    from litbrain.release.source import read_model_source

    src = read_model_source(path)
    if src.config.model_type != "gill":
        if src.files:
            import tempfile

            from transformers import AutoTokenizer

            with tempfile.TemporaryDirectory(prefix="litbrain-tok-") as tmp:
                for name, text in src.files.items():
                    (Path(tmp) / name).write_text(text)
                check_img_tokens(AutoTokenizer.from_pretrained(tmp, local_files_only=True), 8, f"model={path}")
        raise ConfigError(f"model={path}: holds a {src.config.model_type!r} model with no [IMG] tokens, so it cannot "
                          f"produce images; fix: a GILL release or checkpoint (litbrain fit --config "
                          f"configs/gill/gill.yaml)")
    from litbrain.release.export import model_from_source

    model = model_from_source(src)
    tok = load_tokenizer(path)
    ids = check_img_tokens(tok, model.config.n_img_tokens, f"model={path}")
    if ids != model.img_token_ids:
        raise ConfigError(f"model={path}: its tokenizer's [IMG] ids start at {ids[0]}, the model's rows at "
                          f"{model.img_token_ids[0]}; fix: export the release again from its checkpoint")
    return model, tok


def calibrate_img_logit_scale(infer: "GillInference", prompts: list[str], share: float = 0.95,
                              scales: tuple[float, ...] = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)) -> float:
    """The smallest [IMG0] logit scale at which ``share`` of ``prompts`` (training prompts) produce [IMG0]."""
    ids, mask = infer.encode(prompts)
    for s in scales:
        ans = infer.model.answer(ids, mask, 1, infer.tok.eos_token_id, img_logit_scale=s)
        if float(ans["has_img"].float().mean()) >= share:
            return s
    return scales[-1]


class GillInference:
    """Prompts -> GILL's answers: text, retrieve-or-generate, and the image (see the module docstring).

    Args:
        model / tokenizer: a GILL model and its tokenizer (:func:`load_gill`).
        bank_features: (N, F) image features of the retrieval bank (and ``bank_images`` to return them).
        pipeline: a diffusers StableDiffusionPipeline (None: generation is unavailable).
        negative_prompt_embeds: (1, 77, D), the text encoder's embedding of ``""``.
    """

    def __init__(self, model: GillModel, tokenizer: Any, bank_features: torch.Tensor, pipeline: Any = None,
                 negative_prompt_embeds: torch.Tensor | None = None, guidance_scale: float = 3.0,
                 num_inference_steps: int = 25, max_new_tokens: int = 4, seed: int = 0, img_logit_scale: float = 1.0):
        self.model, self.tok = model.eval(), tokenizer
        check_img_tokens(tokenizer, model.config.n_img_tokens, "GillInference")
        self.bank = model.image_embedding(bank_features.float())
        self.pipeline, self.negative = pipeline, negative_prompt_embeds
        self.guidance_scale, self.steps, self.max_new, self.seed = guidance_scale, num_inference_steps, max_new_tokens, seed
        self.img_logit_scale = float(img_logit_scale)
        if pipeline is not None:
            check_cross_attention_width(model.config.mapper.out_dim, pipeline.unet.config.cross_attention_dim,
                                        "the pipeline")

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [[self.tok.bos_token_id, *self.tok.encode(p, add_special_tokens=False)] for p in prompts]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.bool)
        for b, s in enumerate(seqs):
            ids[b, :len(s)], mask[b, :len(s)] = torch.tensor(s), True
        return ids, mask

    @torch.no_grad()
    def __call__(self, prompts: list[str], generate: bool = True) -> dict[str, Any]:
        """``has_img`` / ``decision`` (0 retrieve, 1 generate, -1 no [IMG0]) / ``retrieved`` (bank index) /
        ``prompt_embeds`` per prompt, and ``images`` (B, 3, H, W) in [0, 1] for the rows that generate."""
        m = self.model
        ids, mask = self.encode(prompts)
        ans = m.answer(ids, mask, self.max_new, self.tok.eos_token_id, img_logit_scale=self.img_logit_scale)
        states, embeds = ans["img_states"], ans["img_embeds"]
        decision = torch.where(ans["has_img"], m.decide(states).argmax(-1), torch.full_like(ans["has_img"], -1,
                                                                                            dtype=torch.long))
        retrieved = (m.text_embedding(states) @ self.bank.T).argmax(-1)
        prompt_embeds = m.prompt_embeds(states, embeds)
        out = {"tokens": ans["tokens"], "has_img": ans["has_img"], "decision": decision, "retrieved": retrieved,
               "prompt_embeds": prompt_embeds}
        if generate and self.pipeline is not None:
            rows = (decision == 1).nonzero()[:, 0]
            if len(rows):
                out["generated_rows"] = rows
                out["images"] = self.generate(prompt_embeds[rows])
        return out

    def generate(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Images from ``prompt_embeds`` through the pipeline (seed ``seed + i`` per image)."""
        if self.pipeline is None:
            raise ConfigError("pipeline: none given, so GILL cannot generate; fix: set pipeline (a diffusers folder "
                              "or Hub id)")
        return _generate(self.pipeline, prompt_embeds, self.negative, self.seed, self.steps, self.guidance_scale)


def _generate(pipe: Any, embeds: torch.Tensor, negative: torch.Tensor | None, seed: int, steps: int,
              guidance: float) -> torch.Tensor:
    if negative is None:
        negative = torch.zeros_like(embeds[:1])
    return generate_from_embeddings(pipe, embeds, negative, seed=seed, steps=steps, guidance_scale=guidance,
                                    progress=True)


# ----------------------------------------------------------------------------- the evaluate verb
def _majority(labels: np.ndarray) -> float:
    return float(np.bincount(labels, minlength=2).max() / max(len(labels), 1))


def evaluate_gill(model: str = "runs/gill_demo/release", world: str = "data/gill_demo/world",
                  pipeline: str | None = None, probe: str | None = None, text_encoder: str | None = None,
                  out_dir: str = "runs/gill_demo/results", bank_size: int = 100, n_heldout: int = 400,
                  bank_rule: dict[str, str] | None = None, split_seed: int = 0, cache_dir: str | None = None,
                  n_generate: int = 64, n_figure: int = 6, steps: int = 25, guidance_scale: float = 3.0,
                  batch_size: int = 64, img_logit_scale: float | None = 1.0, seed: int = 0) -> dict[str, Any]:
    """GILL on held-out prompts: mapper distance / cosine, decision accuracy, R@1, generation vs the pipeline.

    Args:
        model: a GILL release or checkpoint.
        world: the world folder GILL was trained on (the same split arguments as training).
        pipeline: a diffusers pipeline folder or Hub id; null: the one named in the release's config
            (if any). Without one, the generation rows are left out.
        probe: the world probe release (the generation family's) that scores attributes; null: no
            attribute accuracy.
        text_encoder: as GillDataModule's (null: the pipeline's, else the offline MiniLM).
        out_dir: metrics.json, table.md and figure.png go there.
        n_generate: held-out prompts generated both ways for the attribute comparison.
        n_figure: prompts in the figure.
        steps / guidance_scale / seed: the pipeline's sampling.
        img_logit_scale: GILL's ``ret_scale_factor`` for greedy decoding; null: the smallest of 1, 1.25, .. 4
            at which 95 % of (a sample of) the training prompts produce [IMG0].
    """
    from litbrain.datamodules.gill import GillDataModule

    gill, tok = load_gill(model)
    pipe_spec = pipeline or gill.config.pipeline
    if pipe_spec:  # the cheap check first: the mapper's width against the UNet's, from its config alone
        check_cross_attention_width(gill.config.mapper.out_dim, _unet_width(pipe_spec), f"pipeline={pipe_spec}")
    lm = gill.config.lm
    if not isinstance(lm, str):
        raise ConfigError(f"model={model}: its LM is a config dict (a test model), not a folder with a tokenizer; "
                          f"fix: a GILL trained on a saved LM")
    if text_encoder is None and pipe_spec:
        text_encoder = pipe_spec  # the pipeline's own text_encoder/ + tokenizer/
    dm = GillDataModule(world=world, tokenizer=lm, text_encoder=text_encoder, max_length=gill.config.mapper.n_output_tokens,
                        n_img_tokens=gill.config.n_img_tokens, bank_size=bank_size, n_heldout=n_heldout,
                        bank_rule=bank_rule, split_seed=split_seed, cache_dir=cache_dir, batch_size=batch_size)
    dm.setup("test")
    if dm.target_width != gill.config.mapper.out_dim:
        check_cross_attention_width(gill.config.mapper.out_dim, dm.target_width, f"text_encoder={dm.text_encoder_spec}")
    pipe = load_pipeline(pipe_spec) if pipe_spec else None
    infer = GillInference(gill, dm.tokenizer, dm.bank_features(), pipe, dm.negative_prompt_embeds, guidance_scale, steps,
                          seed=seed)
    w = dm.world
    if img_logit_scale is None:  # the smallest scale at which training prompts get [IMG0] (never the held-out ones)
        infer.img_logit_scale = calibrate_img_logit_scale(infer, [p for _, p in w.prompts("train")][::7][:256])
    else:
        infer.img_logit_scale = float(img_logit_scale)
    pairs = w.prompts("heldout")
    prompts = [p for _, p in pairs]
    idx = np.array([i for i, _ in pairs])
    labels = np.array([w.decision(int(i)) for i in idx])
    bank_pos = np.array([dm.bank_position.get(int(i), -1) for i in idx])
    from tqdm.auto import tqdm

    rows: dict[str, list] = {"decision": [], "forced_decision": [], "retrieved": [], "forced_retrieved": [],
                             "has_img": [], "dist": [], "cos": [], "embeds": []}
    with torch.no_grad():
        for a in tqdm(range(0, len(prompts), batch_size), desc="GILL on held-out prompts"):
            res = infer(prompts[a:a + batch_size], generate=False)
            batch = dm.loader("test", batch_size=batch_size).collate_fn([dm.dataset("test")[k]
                                                                          for k in range(a, min(a + batch_size, len(prompts)))])
            fo = gill.img_forward(batch["ids"], batch["mask"])
            pred = gill.prompt_embeds(fo["img_states"], fo["img_embeds"])
            rows["forced_decision"].append(gill.decide(fo["img_states"]).argmax(-1))
            rows["forced_retrieved"].append((gill.text_embedding(fo["img_states"]) @ infer.bank.T).argmax(-1))
            rows["dist"].append(((pred - batch["target"]) ** 2).sum(-1).sqrt().mean(1))
            rows["cos"].append(F.cosine_similarity(pred, batch["target"], dim=-1).mean(1))
            rows["embeds"].append(pred)
            for k in ("decision", "retrieved", "has_img"):
                rows[k].append(res[k])
    r = {k: torch.cat(v).numpy() for k, v in rows.items() if k != "embeds"}
    embeds = torch.cat(rows["embeds"])
    is_bank = bank_pos >= 0
    comp = np.array([w.composition(int(i)) for i in idx])
    bank_comp = np.array([w.composition(int(i)) for i in w.bank])
    metrics: dict[str, Any] = {
        "n_heldout_prompts": len(prompts), "img_logit_scale": infer.img_logit_scale,
        "mapper_distance": float(r["dist"].mean()), "mapper_cosine": float(r["cos"].mean()),
        "img0_rate": float(r["has_img"].mean()),
        "decision_accuracy": float((r["decision"] == labels).mean()),
        "decision_accuracy_forced": float((r["forced_decision"] == labels).mean()),
        "decision_majority": _majority(labels),
        "retrieve_share": float((labels == 0).mean()),
        "r_at_1": float((r["forced_retrieved"][is_bank] == bank_pos[is_bank]).mean()),
        "r_at_1_greedy": float(((r["retrieved"] == bank_pos) & r["has_img"])[is_bank].mean()),
        "r_at_1_composition": float((bank_comp[r["forced_retrieved"][is_bank]] == comp[is_bank]).all(1).mean()),
        "r_at_1_chance": 1.0 / len(w.bank), "n_bank_prompts": int(is_bank.sum()),
    }
    gen_rows = _generation_rows(pipe, probe, dm, infer, idx, embeds, n_generate, seed, steps, guidance_scale)
    metrics.update(gen_rows.pop("metrics", {}))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = _table(metrics)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out / "table.md", table + "\n")
    fig = _figure(dm, infer, pipe, prompts, idx, embeds, r, n_figure, seed, steps, guidance_scale, out / "figure.png")
    print(table)
    if fig:
        print(f"figure: {fig}")
    return metrics


def _unet_width(spec: str) -> int:
    """The UNet's cross_attention_dim from a pipeline folder's unet/config.json (or the loaded pipeline)."""
    folder = Path(str(spec).removeprefix("diffusers:"))
    if folder.is_dir():
        cfg = folder / "unet" / "config.json"
        if not cfg.is_file():
            raise ConfigError(f"pipeline={spec}: no unet/config.json in that folder; fix: a diffusers pipeline folder "
                              f"(save_pretrained writes unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
        return int(json.loads(cfg.read_text())["cross_attention_dim"])
    return int(load_pipeline(spec).unet.config.cross_attention_dim)


def generation_sample(n_prompts: int, n: int, seed: int = 0) -> np.ndarray:
    """Which ``n`` of ``n_prompts`` held-out prompts are generated both ways: a seeded uniform sample, in order.

    The held-out list starts with the bank's stimuli (one catalogue: large shapes on dark backgrounds), so
    its first ``n`` would judge GILL on those compositions alone; both rows read the same sample.
    """
    if n >= n_prompts:
        return np.arange(n_prompts)
    return np.sort(np.random.default_rng(seed).choice(n_prompts, size=n, replace=False))


def _generation_rows(pipe: Any, probe: str | None, dm: Any, infer: GillInference, idx: np.ndarray, embeds: torch.Tensor,
                     n: int, seed: int, steps: int, guidance: float) -> dict[str, Any]:
    if pipe is None or probe is None or n <= 0:
        return {"metrics": {"generation": "not run (needs pipeline and probe)"}}
    from litbrain.evaluation.generation import load_probe, probe_accuracy

    pr = load_probe(probe)
    sel = generation_sample(len(idx), n, seed)
    targets = dm.targets[torch.tensor([dm.target_index[p] for _, p in [dm.world.prompts("heldout")[k] for k in sel]])]
    gill_imgs = _generate(pipe, embeds[torch.as_tensor(sel)], dm.negative_prompt_embeds, seed, steps, guidance)
    true_imgs = _generate(pipe, targets, dm.negative_prompt_embeds, seed, steps, guidance)
    labels = {k: torch.as_tensor(v[idx[sel]]) for k, v in dm.world.attrs.items()}
    acc_g = probe_accuracy(pr, gill_imgs, labels)
    acc_t = probe_accuracy(pr, true_imgs, labels)
    mean_g, mean_t = float(np.mean(list(acc_g.values()))), float(np.mean(list(acc_t.values())))
    m = {"n_generated": len(sel), "attr_acc_gill": {k: float(v) for k, v in acc_g.items()},
         "attr_acc_pipeline": {k: float(v) for k, v in acc_t.items()}, "attr_acc_gill_mean": mean_g,
         "attr_acc_pipeline_mean": mean_t, "attr_acc_ratio": mean_g / max(mean_t, 1e-9)}
    return {"metrics": m}


def _table(m: dict[str, Any]) -> str:
    lines = ["| GILL on held-out prompts | value | beside |", "|---|---|---|",
             f"| mapper per-token distance to the text encoder's embedding | {m['mapper_distance']:.3f} | |",
             f"| mapper cosine to the text encoder's embedding | {m['mapper_cosine']:.3f} | |",
             f"| [IMG0] produced by greedy decoding | {m['img0_rate']:.3f} | [IMG0] logit scale {m['img_logit_scale']:g} |",
             f"| decision accuracy (greedy inference) | {m['decision_accuracy']:.3f} | majority {m['decision_majority']:.3f} |",
             f"| decision accuracy (teacher-forced [IMG]) | {m['decision_accuracy_forced']:.3f} | bar 0.90 |",
             f"| retrieval R@1 among {int(round(1 / m['r_at_1_chance']))} bank images ({m['n_bank_prompts']} prompts, "
             f"teacher-forced [IMG]) | {m['r_at_1']:.3f} | chance {m['r_at_1_chance']:.3f} |",
             f"| retrieval R@1 (greedy inference) | {m['r_at_1_greedy']:.3f} | chance {m['r_at_1_chance']:.3f} |",
             f"| retrieval top-1 of the prompt's composition | {m['r_at_1_composition']:.3f} | |"]
    if "attr_acc_ratio" in m:
        for k, v in m["attr_acc_gill"].items():
            lines.append(f"| attribute accuracy {k}: GILL / pipeline from the prompt | {v:.3f} | "
                         f"{m['attr_acc_pipeline'][k]:.3f} |")
        lines.append(f"| attribute accuracy mean: GILL / pipeline ({m['n_generated']} prompts) | "
                     f"{m['attr_acc_gill_mean']:.3f} / {m['attr_acc_pipeline_mean']:.3f} | "
                     f"ratio {m['attr_acc_ratio']:.3f} (bar 0.90) |")
    else:
        lines.append(f"| generation | {m.get('generation', 'not run')} | |")
    return "\n".join(lines)


def _figure(dm: Any, infer: GillInference, pipe: Any, prompts: list[str], idx: np.ndarray, embeds: torch.Tensor,
            r: dict[str, np.ndarray], n: int, seed: int, steps: int, guidance: float, path: Path) -> Path | None:
    """prompts x (pipeline from the prompt, GILL generation, GILL retrieval)."""
    if n <= 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    w = dm.world
    bank_rows = [k for k in range(len(idx)) if dm.bank_position.get(int(idx[k]), -1) >= 0][: (n + 1) // 2]
    other = [k for k in range(len(idx)) if k not in set(bank_rows)][: n - len(bank_rows)]
    sel = bank_rows + other
    cols = ["pipeline from the prompt", "GILL generation", "GILL retrieval"]
    blank = np.full((64, 64, 3), 0.5)
    true_imgs = gill_imgs = None
    if pipe is not None:
        targets = dm.targets[torch.tensor([dm.target_index[prompts[k]] for k in sel])]
        true_imgs = _generate(pipe, targets, dm.negative_prompt_embeds, seed, steps, guidance)
        gill_imgs = _generate(pipe, embeds[sel], dm.negative_prompt_embeds, seed, steps, guidance)
    fig, axes = plt.subplots(len(sel), 3, figsize=(7.5, 2.4 * len(sel)), squeeze=False)
    for row, k in enumerate(sel):
        retrieved = np.asarray(Image.open(w.image_path(int(w.bank[r["retrieved"][k]]))).convert("RGB")) / 255.0
        ims = [blank if true_imgs is None else true_imgs[row].permute(1, 2, 0).numpy(),
               blank if gill_imgs is None else gill_imgs[row].permute(1, 2, 0).numpy(), retrieved]
        dec = {0: "retrieve", 1: "generate", -1: "no [IMG0]"}[int(r["decision"][k])]
        for c, im in enumerate(ims):
            ax = axes[row, c]
            ax.imshow(np.clip(im, 0, 1))
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(cols[c], fontsize=8)
        axes[row, 0].set_ylabel(_wrap(prompts[k]) + f"\nhead: {dec}", fontsize=6)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _wrap(text: str, width: int = 28) -> str:
    words, lines, cur = text.split(), [], ""
    for word in words:
        if len(cur) + len(word) + 1 > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return "\n".join([*lines, cur])

