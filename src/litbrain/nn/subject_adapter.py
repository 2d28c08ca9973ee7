"""Per-subject input maps into one shared width.

One API for fMRI voxels and sEEG channels: each subject owns a small map from its own
feature count (voxels in its ROI, or its electrode channels) to the shared width; the rest
of the network never sees subject-specific shapes. Subjects can be added later (new-subject
transfer) and everything but the adapters frozen.
"""

from __future__ import annotations

from typing import Iterable, Literal

import torch
from torch import nn

from litbrain.errors import ConfigError, SubjectMismatchError

AdapterKind = Literal["linear", "sttm"]


class _SttmBlock(nn.Module):
    """STTM's shallow subject block: Linear -> LayerNorm -> GELU -> Dropout, then one residual MLP."""

    def __init__(self, in_features: int, out_features: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Sequential(
            nn.Linear(in_features, out_features),
            nn.LayerNorm(out_features),
            nn.GELU(),
            nn.Dropout(dropout),
        )
        self.res = nn.Sequential(
            nn.LayerNorm(out_features),
            nn.Linear(out_features, out_features),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(out_features, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return h + self.res(h)


class SubjectAdapter(nn.Module):
    """A map per subject from ``in_features[subject]`` to ``out_features`` along the last dim.

    kind="linear" is MindEye2's ridge-style adapter (one ``Linear`` per subject; give its
    parameters weight decay in the optimiser); kind="sttm" is See Through Their Minds'
    shallow block. Inputs of shape ``(..., in_features)``: for sEEG channels, move the channel
    axis last before calling.

    ``readout=True`` turns every map around (shared width -> the subject's own features), for
    decoders that reconstruct each subject's signal (Du-IN's VQ-VAE); it accepts ``kind="linear"``
    only. Same API otherwise: inputs ``(..., out_features)``, outputs ``(..., in_features[s])``.
    """

    def __init__(
        self,
        in_features: dict[str, int],
        out_features: int,
        kind: AdapterKind = "linear",
        dropout: float = 0.5,
        readout: bool = False,
    ) -> None:
        super().__init__()
        if kind not in ("linear", "sttm"):
            raise ConfigError(f"SubjectAdapter kind={kind!r}; fix: use 'linear' or 'sttm'")
        if readout and kind != "linear":
            raise ConfigError(f"SubjectAdapter readout=True with kind={kind!r}; fix: use kind='linear'")
        self.readout = readout
        self.out_features = out_features
        self.kind = kind
        self.dropout = dropout
        self.maps = nn.ModuleDict()
        self.in_features: dict[str, int] = {}
        for subject, n in in_features.items():
            self.add_subject(subject, n)

    @property
    def subjects(self) -> list[str]:
        return list(self.in_features)

    def _make(self, n: int) -> nn.Module:
        if self.readout:
            return nn.Linear(self.out_features, n)
        if self.kind == "linear":
            return nn.Linear(n, self.out_features)
        return _SttmBlock(n, self.out_features, self.dropout)

    @staticmethod
    def _key(subject: str) -> str:
        # ModuleDict keys cannot contain '.', subject ids like "sub-01" are fine as is.
        return subject.replace(".", "_")

    def add_subject(self, subject: str, in_features: int) -> nn.Module:
        """Add a freshly initialised map for a new subject and return it."""
        if subject in self.in_features:
            raise ConfigError(f"subject {subject!r} already has an adapter; fix: use a new id or replace_subject()")
        if in_features <= 0:
            raise ConfigError(f"subject {subject!r}: in_features={in_features}; fix: give a positive count")
        self.in_features[subject] = int(in_features)
        module = self._make(int(in_features))
        self.maps[self._key(subject)] = module
        return module

    def replace_subject(self, subject: str, in_features: int) -> nn.Module:
        """Re-initialise a subject's map (MindEye2's new-subject recipe re-initialises it)."""
        self.in_features.pop(subject, None)
        del self.maps[self._key(subject)]
        return self.add_subject(subject, in_features)

    def forward(self, x: torch.Tensor, subject: str) -> torch.Tensor:
        try:
            expected = self.in_features[subject]
        except KeyError:
            raise SubjectMismatchError(
                f"no adapter for subject {subject!r} (known: {self.subjects}); fix: add_subject() it"
            ) from None
        if self.readout:
            expected = self.out_features
        if x.shape[-1] != expected:
            raise SubjectMismatchError(
                f"subject {subject!r}: input has {x.shape[-1]} features but its adapter expects "
                f"{expected}; fix: use the data the adapter was trained on or add a new adapter"
            )
        return self.maps[self._key(subject)](x)

    def forward_groups(self, groups: dict[str, torch.Tensor]) -> torch.Tensor:
        """Map each subject's group and concatenate along the batch axis, in dict order."""
        return torch.cat([self(x, s) for s, x in groups.items()], dim=0)


def check_subject_batch(brain: object, ndim: int, shape: str, subjects: dict[str, int], model: str) -> None:
    """Refuse anything but ``{subject: tensor of ndim dims}`` for known subjects, in one clear line.

    ``shape`` names the expected per-subject layout, e.g. ``"(batch, n_voxels)"``.
    """
    example = next(iter(subjects), "sub-01")
    if not isinstance(brain, dict):
        raise ConfigError(f"{model} takes {{subject: {shape} tensor}}, got a {type(brain).__name__}; fix: call "
                          f"model({{{example!r}: x}}) with a subject of model.subjects ({list(subjects)[:8]})")
    for s, x in brain.items():
        if s not in subjects:
            raise SubjectMismatchError(f"{model}: no adapter for subject {s!r} (known: {list(subjects)[:8]}); fix: use "
                                       f"one of model.subjects, or fine-tune an adapter for {s!r} (init_from)")
        if not isinstance(x, torch.Tensor) or x.ndim != ndim:
            got = f"a {x.ndim}-D tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            hint = "; fix: add the batch axis, x[None]" if isinstance(x, torch.Tensor) and x.ndim == ndim - 1 else \
                f"; fix: pass {shape}"
            raise ConfigError(f"{model}: subject {s!r} needs a {ndim}-D tensor {shape}, got {got}{hint}")


def freeze_all_but_adapters(model: nn.Module, subjects: Iterable[str] | None = None) -> list[str]:
    """Set requires_grad=False everywhere except the adapter maps (of ``subjects`` if given).

    Returns the names of the parameters left trainable, so callers can log or assert them.
    """
    keep: list[str] = []
    adapters = [m for m in model.modules() if isinstance(m, SubjectAdapter)]
    if not adapters:
        raise ConfigError("freeze_all_but_adapters: the model has no SubjectAdapter")
    for p in model.parameters():
        p.requires_grad_(False)
    for adapter in adapters:
        chosen = adapter.subjects if subjects is None else list(subjects)
        for s in chosen:
            module = adapter.maps[adapter._key(s)]
            for name, p in module.named_parameters():
                p.requires_grad_(True)
                keep.append(f"{s}.{name}")
    return keep
