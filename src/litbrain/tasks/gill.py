"""GILL's training task: the frozen LM learns [IMG] tokens, a visual input map, retrieval and generation heads.

Every step computes GILL's losses with GILL's weights (kohjingyu/gill ``main.py``):

* captioning CE x1: ``[4 visual tokens | caption]`` (image feature -> Linear -> 4 tokens);
* retrieval: CE of the [IMG] tokens x0.5 + symmetric InfoNCE between ``Linear(width -> 256)`` of the
  [IMG0] state and ``Linear(image -> 256)`` of the image feature (learnable logit scale) x1;
* generation: CE of the [IMG] tokens x0.5 + :func:`~litbrain.losses.mapping.per_token_l2_loss` of the
  mapper's ``(77, D)`` output to the frozen text encoder's embedding of the prompt x1 (not MSE);
* the decision head (retrieve / generate) CE on the detached [IMG0] state x ``decision_weight``
  (GILL trains it on frozen features, so it never moves the [IMG] rows).

Only the [IMG] rows of the LM's embedding matrices are updated: a gradient mask zeroes the other
rows, those matrices take no weight decay (AdamW's decay would move the frozen rows), and after
each optimiser step the [IMG] rows are rescaled to the frozen rows' mean norm. Validation logs the
per-token distance and cosine to the targets, decision accuracy and retrieval R@1 among the bank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from litbrain.errors import ConfigError
from litbrain.losses.mapping import per_token_l2_loss
from litbrain.nn.gill import GillConfig, GillModel
from litbrain.tasks.base import CarriesFiles, LitbrainTask, SplitEvaluation
from litbrain.tasks.vlm import tokenizer_files

__all__ = ["GillTask", "gill_losses", "info_nce", "refit_decision_head"]

LOSS_WEIGHTS = {"caption": 1.0, "ret_img_ce": 0.5, "ret_nce": 1.0, "gen_img_ce": 0.5, "gen_l2": 1.0}


def info_nce(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE of a (B, B) similarity matrix whose diagonal holds the pairs."""
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def gill_losses(model: GillModel, batch: dict[str, Tensor], decision_weight: float = 1.0) -> dict[str, Tensor]:
    """Every GILL loss of one batch and their weighted sum (``loss``)."""
    cap = model.caption_loss(batch["image"], batch["cap_ids"], batch["cap_mask"], batch["cap_labels"])
    out = model.img_forward(batch["ids"], batch["mask"])
    img_ce = model.img_token_loss(batch["ids"], out["logits"])
    nce = info_nce(model.retrieval_logits(out["img_states"], batch["image"]))
    pred = model.prompt_embeds(out["img_states"], out["img_embeds"])
    l2 = per_token_l2_loss(pred, batch["target"])
    dec = F.cross_entropy(model.decision(out["img_states"][:, 0].detach()), batch["decision"])
    w = LOSS_WEIGHTS
    total = (w["caption"] * cap + w["ret_img_ce"] * img_ce + w["ret_nce"] * nce + w["gen_img_ce"] * img_ce
             + w["gen_l2"] * l2 + decision_weight * dec)
    return {"loss": total, "caption": cap, "img_ce": img_ce, "nce": nce, "gen_l2": l2, "decision": dec}


@torch.enable_grad()
def refit_decision_head(model: GillModel, batches: Any, steps: int = 100, l2: float = 1e-4) -> float:
    """GILL's decision stage: fit the decision head on frozen [IMG0] states of ``batches``.

    The states are computed once without gradients; only the head's Linear moves, by full-batch
    L-BFGS on the cross-entropy + ``l2`` * ||W||^2 (the stage is a convex logistic regression, so a
    second-order fit reaches its optimum where first-order steps on uncentred 128-wide states crawl;
    the head's Dropout, a training-time regulariser, is replaced by the L2 term here). Returns the
    fitted head's cross-entropy on those states.
    """
    states, labels = [], []
    with torch.no_grad():
        for b in batches:
            dev = model.logit_scale.device
            out = model.img_forward(b["ids"].to(dev), b["mask"].to(dev))
            states.append(out["img_states"][:, 0].float())
            labels.append(b["decision"].to(dev))
    x, y = torch.cat(states), torch.cat(labels)
    linear = model.decision[-1]
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=int(steps), line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(linear(x), y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)  # (returns the loss before the fit)
    with torch.no_grad():
        return float(F.cross_entropy(linear(x), y))


class GillTask(CarriesFiles, SplitEvaluation, LitbrainTask):
    """GILL on a frozen causal LM (see the module docstring).

    Args:
        net: :class:`~litbrain.nn.gill.GillConfig` (``lm``: the frozen LM's folder; ``pipeline``: the
            diffusers pipeline; ``image_dim``: 0 takes the data's feature width).
        decision_weight: weight of the decision head's CE.
        decision_lr: learning rate of the decision head (null: ``lr``). GILL trains this head as a stage of its
            own on frozen features; here it trains beside the rest on the detached [IMG0] state, and a small
            world's short run may give it a larger step.
        decision_refit_steps: GILL trains the decision classifier as a stage of its own, on frozen features: with
            > 0, before every validation the head is fitted (that many L-BFGS iterations,
            :func:`refit_decision_head`) on the training prompts' current [IMG0] states, so each checkpoint holds a
            head fitted to its own [IMG] rows. 0: only the per-step detached training.
        lr / betas / weight_decay / warmup_fraction: AdamW (GILL: 1e-3, (0.9, 0.95), 0.01) + one-cycle schedule.
    """

    config_class = GillConfig

    def __init__(self, net: GillConfig | None = None, decision_weight: float = 1.0, decision_lr: float | None = None,
                 decision_refit_steps: int = 0, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.01,
                 warmup_fraction: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.init_net(net)
        self.model: GillModel | None = None
        self._tokenizer_files: dict[str, str] = {}
        self.metrics = nn.ModuleDict({f"{s}_{m}": MeanMetric() for s in ("val", "test")
                                      for m in ("distance", "cosine", "decision_acc", "r1", "img_ce")})
        self._bank: Tensor | None = None

    def setup(self, stage: str) -> None:
        dm = self.datamodule
        if dm is None:
            return
        net = self.net
        if hasattr(dm, "image_dim") and net.image_dim != dm.image_dim:
            raise ConfigError(f"model.init_args.net.image_dim={net.image_dim} but the data's image features have "
                              f"{dm.image_dim} values; fix: set it to {dm.image_dim}")
        dm.compute_targets()
        if net.mapper.out_dim != dm.target_width or net.mapper.n_output_tokens != dm.targets.shape[1]:
            raise ConfigError(f"model.init_args.net.mapper: out_dim={net.mapper.out_dim}, n_output_tokens="
                              f"{net.mapper.n_output_tokens}, but the text encoder's targets are "
                              f"({dm.targets.shape[1]}, {dm.target_width}); fix: set them to those")
        self._tokenizer_files = self._tokenizer_files or tokenizer_files(dm.tokenizer)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = GillModel(self.net)
        dm = self.datamodule
        if dm is not None and getattr(dm, "img_ids", None) is not None and dm.img_ids != self.model.img_token_ids:
            raise ConfigError(f"data.init_args.tokenizer: its [IMG] ids start at {dm.img_ids[0]} but the LM "
                              f"{self.net.lm} has {self.model.base_vocab} tokens; fix: the tokenizer saved beside that LM")

    def checkpoint_monitor(self) -> tuple[str, str] | None:
        return ("val/distance", "min")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with GILL's betas; the LM's embedding matrices (masked) and biases / norms take no decay."""
        h = self.hparams
        emb = {id(p) for p in self.model.embedding_matrices()}
        head = {id(p) for p in self.model.decision.parameters()}
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad and id(p) not in head:
                (no_decay if (p.ndim < 2 or id(p) in emb) else decay).append(p)
        head_lr = h.get("decision_lr") or h.lr
        groups = [{"params": decay, "weight_decay": h.weight_decay, "lr": h.lr},
                  {"params": no_decay, "weight_decay": 0.0, "lr": h.lr},
                  {"params": list(self.model.decision.parameters()), "weight_decay": h.weight_decay, "lr": head_lr}]
        opt = torch.optim.AdamW(groups, lr=h.lr, betas=tuple(h.betas))
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1000
        if total < 4:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        else:
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=total,
                                                        pct_start=min(max(h.warmup_fraction, 2.0 / total), 0.5),
                                                        final_div_factor=1000)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.model.rescale_img_rows()  # GILL: after each step, the [IMG] rows get the frozen rows' mean norm

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = gill_losses(self.model, batch, self.hparams.decision_weight)
        self.log_dict({f"train/{k}": v for k, v in out.items() if k != "loss"}, prog_bar=False)
        self.log("train/loss", out["loss"], prog_bar=True)
        return out["loss"]

    # ------------------------------------------------------------------ evaluation
    def _bank_embeddings(self) -> Tensor | None:
        dm = self.datamodule
        if dm is None or not hasattr(dm, "bank_features"):
            return None
        return self.model.image_embedding(dm.bank_features().to(self.device))

    def _eval_step(self, batch: dict[str, Tensor], prefix: str) -> None:
        m = self.model
        out = m.img_forward(batch["ids"], batch["mask"])
        pred = m.prompt_embeds(out["img_states"], out["img_embeds"])
        self.metrics[f"{prefix}_distance"].update(((pred - batch["target"]) ** 2).sum(-1).sqrt().mean(1))
        self.metrics[f"{prefix}_cosine"].update(F.cosine_similarity(pred, batch["target"], dim=-1).mean(1))
        self.metrics[f"{prefix}_decision_acc"].update((m.decide(out["img_states"]).argmax(-1) == batch["decision"]).float())
        self.metrics[f"{prefix}_img_ce"].update(m.img_token_loss(batch["ids"], out["logits"]))
        bank = self._bank_embeddings()
        sel = batch["bank_index"] >= 0
        if bank is not None and bool(sel.any()):
            top = (m.text_embedding(out["img_states"][sel]) @ bank.T).argmax(-1)
            self.metrics[f"{prefix}_r1"].update((top == batch["bank_index"][sel]).float())

    def _log_eval(self, prefix: str) -> None:
        for name in ("distance", "cosine", "decision_acc", "r1", "img_ce"):
            metric = self.metrics[f"{prefix}_{name}"]
            if metric.update_count:
                self.log(f"{prefix}/{name}", metric.compute(), prog_bar=name in ("distance", "decision_acc"))
            metric.reset()

    def on_validation_start(self) -> None:
        h, dm = self.hparams, self.datamodule
        if h.get("decision_refit_steps", 0) > 0 and dm is not None and self.trainer.state.fn == "fit":
            loss = refit_decision_head(self.model, dm.loader("train"), h.decision_refit_steps)
            print(f"[litbrain] decision head fitted on frozen [IMG0] states (L-BFGS, {h.decision_refit_steps} "
                  f"iterations): loss {loss:.3f}", flush=True)

