"""Vector quantiser with EMA codebook updates, k-means initialisation and dead-code restarts.

The quantiser of Du-IN's stage-1 tokenizer (VQ-VAE, codebook 2048 x 64, EMA decay 0.99, k-means
init). Codes are updated by exponential moving averages of the assigned encoder outputs (van den
Oord et al., appendix), not by gradients; the encoder gets the straight-through gradient plus the
commitment term. ``rule="litbrain"`` (the default; litbrain's own rule, not the authors'): EMA of
sums and counts with Laplace smoothing, k-means++ seeding, and codes that go unused for long are
restarted on random encoder outputs, so the codebook stays alive.

``rule="authors"`` is the quantiser of Du-IN's code (LaBraM's ``NormEMAVectorQuantizer``): inputs and
codes on the unit sphere; each step every code that got vectors moves to
``normalise(decay * code + (1 - decay) * normalise(mean of its vectors))``, codes that got none stay
unchanged (no restarts, no Laplace smoothing); the codebook starts from k-means with cosine
similarity seeded with random samples of the first batch (with replacement when the batch has
fewer vectors than codes).

``init_after`` (litbrain's, default 0 = the authors' k-means on the very first batch): for that many
training steps the quantiser is bypassed (the unit vectors pass straight on, no commitment loss, no
code updates), then k-means runs on the encoder outputs of that moment. With the authors' rule a code
that gets no vectors never moves again, and in the first steps of training the encoder's outputs
move fast (the commitment term pulls the tokens together before the reconstruction has taught the
encoder anything): codes seeded on the random encoder's outputs are left behind and die.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from litbrain.errors import ConfigError


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    # EMA statistics must agree across DDP ranks, or the replicas' codebooks drift apart.
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def kmeans(x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means on the rows of ``x`` with k-means++ seeding; returns (k, d).

    With fewer distinct rows than ``k`` the remaining seeds repeat rows plus a little noise, so
    every code starts distinct (the dead-code restarts spread them later).
    """
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator, device=x.device))
    centers = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        if float(d2.sum()) <= 0:  # every row is already a centre
            pick = int(torch.randint(n, (1,), generator=generator, device=x.device))
            c = x[pick] + 1e-3 * (x.std() + 1e-6) * torch.randn(x.shape[1], generator=generator, device=x.device)
        else:
            pick = int(torch.multinomial(d2, 1, generator=generator))
            c = x[pick]
        centers.append(c)
        d2 = torch.minimum(d2, (x - c).pow(2).sum(1))
    centers = torch.stack(centers).clone()
    for _ in range(iters):
        assign = torch.cdist(x, centers).argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
    return centers


def kmeans_cosine(x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Du-IN's k-means on unit rows of ``x``: seeds = random rows, assignment by cosine similarity,
    centres re-normalised, empty clusters keep their centre; returns (k, d) unit rows."""
    n = x.shape[0]
    pick = (torch.randperm(n, generator=generator, device=x.device)[:k] if n >= k
            else torch.randint(n, (k,), generator=generator, device=x.device))
    means = x[pick].clone()
    for _ in range(iters):
        assign = (x @ means.t()).argmax(1)
        bins = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(means).index_add_(0, assign, x)
        new = F.normalize(sums / bins.clamp_min(1)[:, None].to(x.dtype), dim=-1)
        means = torch.where((bins == 0)[:, None], means, new)
    return F.normalize(means, dim=-1)


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of the last dimension.

    Args:
        n_codes: codebook size (Du-IN: 2048).
        dim: code dimension (Du-IN: 64).
        decay: EMA decay of the code statistics (Du-IN: 0.99).
        commitment: weight of ``||z - sg(q)||^2`` in the returned loss.
        kmeans_init: initialise the codebook by k-means on the first training batch.
        kmeans_iters: Lloyd iterations of that initialisation.
        dead_after: restart a code that no vector was assigned to for this many consecutive
            training steps (0 disables restarts).
        normalize: l2-normalise inputs and codes, i.e. match by cosine similarity (LaBraM's and
            Du-IN's normalised EMA quantiser); keeps codes on one scale, so fewer die.
        eps: Laplace smoothing of the EMA cluster sizes.
        rule: ``"litbrain"`` (the above) or ``"authors"`` (Du-IN's normalised-mean EMA, zero-count
            codes unchanged, cosine k-means from random samples; implies ``normalize`` and no restarts).
        init_after: training steps before the k-means init, during which the quantiser is bypassed
            (0: init on the first training batch, as the authors do).
    """

    def __init__(
        self,
        n_codes: int = 2048,
        dim: int = 64,
        decay: float = 0.99,
        commitment: float = 0.25,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_after: int = 20,
        normalize: bool = True,
        eps: float = 1e-5,
        rule: str = "litbrain",
        init_after: int = 0,
    ) -> None:
        super().__init__()
        if rule not in ("litbrain", "authors"):
            raise ConfigError(f"VectorQuantizer rule={rule!r}; fix: 'authors' (Du-IN's EMA) or 'litbrain'")
        self.rule = rule
        if rule == "authors":
            normalize, dead_after = True, 0
        if n_codes < 2 or dim < 1:
            raise ConfigError(f"VectorQuantizer n_codes={n_codes}, dim={dim}; fix: n_codes >= 2 and dim >= 1")
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"VectorQuantizer decay={decay}; fix: a value in (0, 1), e.g. 0.99")
        if init_after < 0:
            raise ConfigError(f"VectorQuantizer init_after={init_after}; fix: 0 (k-means on the first batch) or more steps")
        if init_after and not kmeans_init:
            raise ConfigError("VectorQuantizer init_after needs kmeans_init=True (it delays the k-means init); fix: set both")
        self.init_after = int(init_after)
        self.n_codes, self.dim, self.decay, self.commitment = n_codes, dim, decay, commitment
        self.kmeans_iters, self.dead_after, self.normalize, self.eps = kmeans_iters, dead_after, normalize, eps
        init = torch.randn(n_codes, dim)
        self.register_buffer("codebook", F.normalize(init, dim=1) if normalize else init * dim ** -0.5)
        self.register_buffer("ema_size", torch.ones(n_codes))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.tensor(not kmeans_init))
        self.register_buffer("idle_steps", torch.zeros(n_codes, dtype=torch.long))
        # Training steps seen before the k-means init (counts up to ``init_after``).
        self.register_buffer("steps_before_init", torch.zeros((), dtype=torch.long))
        # Codes hit since the last reset_usage(): the "codebook usage" metric.
        self.register_buffer("usage_counts", torch.zeros(n_codes, dtype=torch.long), persistent=False)

    # ------------------------------------------------------------------ codebook maintenance
    @torch.no_grad()
    def _init_codebook(self, flat: torch.Tensor) -> None:
        if self.rule == "authors":
            centers = kmeans_cosine(flat.float(), self.n_codes, self.kmeans_iters)
        else:
            centers = self._norm(kmeans(flat.float(), self.n_codes, self.kmeans_iters))
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(centers, 0)
        self.codebook.copy_(centers)
        self.ema_sum.copy_(centers)
        self.ema_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        onehot_sum = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat.float())
        counts = torch.bincount(idx, minlength=self.n_codes).to(flat.dtype).float()
        _all_reduce(onehot_sum)
        _all_reduce(counts)
        if self.rule == "authors":
            # The authors blend a zero-count code with itself (a no-op up to rounding): skip it, exactly.
            used = counts > 0
            mean = F.normalize(onehot_sum[used] / counts[used, None], dim=-1)
            self.codebook[used] = F.normalize(self.decay * self.codebook[used] + (1 - self.decay) * mean, dim=-1)
            return
        self.ema_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot_sum, alpha=1 - self.decay)
        n = self.ema_size.sum()
        size = (self.ema_size + self.eps) / (n + self.n_codes * self.eps) * n  # Laplace smoothing
        self.codebook.copy_(self._norm(self.ema_sum / size[:, None]))
        if self.dead_after > 0:
            self.idle_steps.add_(1).masked_fill_(counts > 0, 0)
            dead = self.idle_steps >= self.dead_after
            n_dead = int(dead.sum())
            if n_dead:
                # Restart on random encoder outputs of this batch (the same on every rank).
                pick = torch.randint(flat.shape[0], (n_dead,), device=flat.device)
                if dist.is_available() and dist.is_initialized():
                    dist.broadcast(pick, 0)
                new = flat[pick].float()
                if dist.is_available() and dist.is_initialized():
                    dist.broadcast(new, 0)
                self.codebook[dead] = new
                self.ema_sum[dead] = new
                self.ema_size[dead] = 1.0
                self.idle_steps[dead] = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # Checkpoints from before ``init_after`` existed carry no step counter: their codebook is initialised.
        state_dict.setdefault(prefix + "steps_before_init", torch.tensor(self.init_after, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    # ------------------------------------------------------------------ API
    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each vector of ``z`` (..., dim) -> (...)."""
        flat = self._norm(z.reshape(-1, self.dim).float())
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.pow(2).sum(1)[None]
        return d.argmin(1).reshape(z.shape[:-1])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise ``z`` (..., dim): returns (straight-through quantised z, code indices, commitment loss)."""
        if z.shape[-1] != self.dim:
            raise ConfigError(f"VectorQuantizer: input last dim {z.shape[-1]} != code dim {self.dim}")
        z = self._norm(z)
        flat = z.reshape(-1, self.dim)
        if self.training and not bool(self.initialised):
            if int(self.steps_before_init) < self.init_after:
                self.steps_before_init += 1
                return z, self.indices(z), z.sum() * 0.0  # bypassed: no quantisation yet
            self._init_codebook(flat.detach())
        idx = self.indices(z)
        q = F.embedding(idx, self.codebook).to(z.dtype)
        if self.training:
            self._ema_update(flat.detach(), idx.reshape(-1))
        self.usage_counts += torch.bincount(idx.reshape(-1), minlength=self.n_codes)
        loss = self.commitment * F.mse_loss(z, q.detach())
        return z + (q - z).detach(), idx, loss

    def reset_usage(self) -> None:
        self.usage_counts.zero_()

    def usage(self) -> float:
        """Fraction of codes assigned at least once since the last :meth:`reset_usage`."""
        return float((self.usage_counts > 0).float().mean())

    def perplexity(self) -> float:
        """exp(entropy) of the code assignment histogram since the last reset (max = n_codes)."""
        p = self.usage_counts.float()
        if p.sum() == 0:
            return 0.0
        p = p / p.sum()
        return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
