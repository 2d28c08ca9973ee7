"""Synthetic sEEG word-production data in real BIDS-iEEG (mne-bids), with a known Bayes oracle.

:func:`synthesize_seeg` writes a BIDS-iEEG dataset that :func:`litbrain.datamodules.prepare_seeg`
reads: per subject and run a recording (BrainVision or EDF, written by ``mne_bids.write_raw_bids``
from an ``mne.io.RawArray`` of channel type ``seeg``), ``channels.tsv``, ``events.tsv`` (word
onsets, ``trial_type`` = the word) and ``electrodes.tsv`` (contact coordinates, plus the two
extra columns ``group`` = shaft and ``region`` = anatomical label), and ``truth.npz`` /
``truth.json`` at the root (listed in ``.bidsignore``).

Generative model, per subject ``s`` with ``C`` monopolar contacts on shafts ``A, B, ...``::

    x(t)  = sum_trials  M_{word}[:, t - onset]   +  n(t)  +  line(t)          (C x time)
    M_k   = A_{s,k} @ Phi_k^T,  A_{s,k} = W_s @ B_k  on region contacts, 0 elsewhere
    n     ~ GaussianProcess: cov(vec n) = S_s (x) Sigma_t    (Kronecker: space x time)
    S_s   = noise^2 * (diag(g_c^2) + common_noise^2 * 11^T)     own + common-reference noise
    Sigma_t[l] = sum_i v_i rho_i^|l| + w delta_l                sum of AR(1) = 1/f-like spectrum
    line  = a_c cos(2 pi f_line t + phi) + 0.3 a_c cos(2 pi 2 f_line t + 2 phi)

Words are sequences of articulatory gestures (default, ``n_phonemes > 0``): a shared inventory of
``n_phonemes`` gestures, each a latent spatial pattern ``u_q`` (latent_dim) and a Gabor burst at its
own frequency (4-25 Hz); word ``k`` is a distinct sequence of ``phonemes_per_word`` of them, the
i-th at the i-th word-locked slot, so column i of ``Phi_k`` is gesture ``p_{k,i}``'s burst at slot i
and column i of ``B_k`` is ``u_{p_{k,i}}``. Words share gestures, as spoken words share phonemes:
the recording has structure that unlabelled trials teach (which gestures exist, which follow
which), and that is what Du-IN's self-supervised stages can learn before any label is seen.
With ``n_phonemes = 0`` every word instead has an independent random code ``B_k`` (latent_dim x
n_basis) over ``n_basis`` bursts ``Phi`` common to all words (no shared parts).
``W_s`` (region contacts x latent_dim) is subject specific. Region shafts (one per region) hold the
region contacts followed by one white-matter contact, so bipolar re-referencing along the shaft
(anode label) yields exactly ``region_channels`` region channels.

High-gamma envelope coding (``envelope_snr > 0``; off by default, and then the files are byte for
byte those of earlier versions): each gesture also drives a high-gamma burst on the same contacts,
``B_k = W_s @ B_k'`` times ``envelope_snr``'s scale, the gesture's Gaussian envelope times a carrier at the
gesture's own frequency in ``hg_band`` (70-150 Hz), with one carrier phase ``theta ~ U(0, 2 pi)`` drawn
per trial. Averaged over ``theta`` its class mean is zero: a linear model on the voltage cannot see
it, only its amplitude envelope carries the word, as in speech sEEG. Timing variability
(``onset_jitter_s > 0``): each trial's whole response is shifted by ``tau``, uniform on
``jitter_steps`` equally spaced values in ``[-onset_jitter_s, +onset_jitter_s]``. Per trial::

    x = A_k Phi_k(tau)^T + B_k (cos theta Psi_k(tau) + sin theta Psi'_k(tau))^T + noise

Oracle: for Gaussian noise with a known covariance and known class means, the Bayes-optimal
rule is the linear discriminant ``argmax_k <S^-1 A_k, Y> - 1/2 <S^-1 A_k, A_k G>`` with
``Y = X Q Phi_k`` and ``G = Phi_k^T Q Phi_k``, where ``Q`` is ``Sigma_t^-1`` with the line-noise
subspace projected out (line noise of unknown phase is a nuisance with a flat prior). It uses
every contact of the raw monopolar epoch, so it upper-bounds any decoder of the recording. Its
accuracy is measured on ``oracle_trials`` fresh trials per word and subject, drawn exactly from
the generative model, and written to ``truth.json`` (``oracle_accuracy`` per subject and mean,
with its standard error, and chance = 1 / n_words).

With envelope coding or jitter the Bayes rule marginalises the nuisance: ``p(x | k)`` is the mean
over the ``jitter_steps`` shifts (exact, a finite uniform prior) of the integral over ``theta`` of the
Gaussian likelihood, whose log is ``l0 + l1 cos + l2 sin - 1/2 [1 cos sin] G [1 cos sin]^T``; the
periodic integral is taken by the trapezoid rule on ``phase_points`` (256) phases, which converges
exponentially fast. ``truth.json`` states how many oracle decisions change when the phase grid is
halved (``oracle_quadrature_changed``: 0 means the decisions have converged, i.e. the reported
accuracy is the exact Bayes accuracy on those trials).
"""

from __future__ import annotations

import json
import math
import os
import string
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from litbrain.errors import DataError
from ..io import synthetic_is_current
from litbrain.utils.io import atomic_dir

__all__ = ["synthesize_seeg", "load_seeg_truth", "seeg_oracle_accuracy", "seeg_word_labels"]

TRUTH_FORMAT = "litbrain-synthetic-seeg/1"
_TAUS_S = (0.002, 0.01, 0.05, 0.25, 1.0)  # AR(1) time constants: 1/f-like between ~0.2 and ~80 Hz
_WHITE = 0.05
_OTHER_REGIONS = ("WM", "INS", "MTG", "HPC", "IFG")
_CONTACTS_PER_SHAFT = 6
_UNIT = 1e-5  # model units -> volts (signal RMS ~ 10 uV)


def seeg_word_labels(n_words: int) -> list[str]:
    """The synthetic vocabulary: ``word01``, ``word02``, ..."""
    width = max(2, len(str(n_words)))
    return [f"word{i + 1:0{width}d}" for i in range(n_words)]


# ----------------------------------------------------------------------------- noise model
def _ar_params(sfreq: float) -> tuple[np.ndarray, np.ndarray, float]:
    rho = np.exp(-1.0 / (np.asarray(_TAUS_S) * sfreq))
    v = np.full(len(_TAUS_S), (1.0 - _WHITE) / len(_TAUS_S))
    return rho, v, _WHITE


def _autocov(n: int, sfreq: float) -> np.ndarray:
    """First column of the (unit-variance) temporal covariance Sigma_t, lags 0..n-1."""
    rho, v, w = _ar_params(sfreq)
    lags = np.arange(n)
    r = (v[:, None] * rho[:, None] ** lags[None, :]).sum(0)
    r[0] += w
    return r


def _background(rng: np.random.Generator, shape: tuple[int, ...], sfreq: float) -> np.ndarray:
    """Stationary unit-variance 1/f-like noise along the last axis (exact covariance _autocov)."""
    from scipy.signal import lfilter

    rho, v, w = _ar_params(sfreq)
    out = math.sqrt(w) * rng.standard_normal(shape)
    for r_, v_ in zip(rho, v):
        e = rng.standard_normal(shape)
        y0 = math.sqrt(v_) * rng.standard_normal(shape[:-1])  # stationary start
        b = math.sqrt(v_ * (1.0 - r_ * r_))
        y = lfilter([b], [1.0, -r_], e, axis=-1, zi=(r_ * y0)[..., None])[0]
        out += y
    return out


def _basis(n_times: int, sfreq: float, n_basis: int, rng: np.random.Generator) -> np.ndarray:
    """Phi (n_times, n_basis): unit-norm Gabor bursts at word-locked latencies."""
    t = np.arange(n_times) / sfreq
    dur = n_times / sfreq
    centres = np.linspace(0.12, 0.85, n_basis) * dur + rng.uniform(-0.03, 0.03, n_basis) * dur
    freqs = np.exp(rng.uniform(np.log(3.0), np.log(25.0), n_basis))
    phi = np.empty((n_times, n_basis))
    for j in range(n_basis):
        width = max(0.04 * dur, 1.5 / freqs[j])
        env = np.exp(-0.5 * ((t - centres[j]) / width) ** 2)
        phi[:, j] = env * np.cos(2 * np.pi * freqs[j] * (t - centres[j]) + rng.uniform(0, 2 * np.pi))
        phi[:, j] /= np.linalg.norm(phi[:, j]) + 1e-12
    return phi


def _gabor(t: np.ndarray, centre: float, freq: float, phase: float, dur: float) -> np.ndarray:
    width = max(0.04 * dur, 1.5 / freq)
    g = np.exp(-0.5 * ((t - centre) / width) ** 2) * np.cos(2 * np.pi * freq * (t - centre) + phase)
    return g / (np.linalg.norm(g) + 1e-12)


def _phoneme_words(n_times: int, sfreq: float, n_words: int, n_phonemes: int, per_word: int, latent_dim: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Words as sequences of articulatory gestures from a shared inventory.

    Returns Phi (n_words, n_times, per_word): the word's gestures as unit-norm Gabor bursts at its
    slots; codes (n_words, latent_dim, per_word): each gesture's latent spatial pattern; and the
    phoneme sequences (n_words, per_word).
    """
    if n_phonemes ** per_word < n_words:
        raise DataError(f"synthesize_seeg: {n_phonemes} phonemes in words of {per_word} give fewer than {n_words} "
                        f"distinct words; fix: raise n_phonemes or phonemes_per_word")
    seqs: list[tuple[int, ...]] = []
    while len(seqs) < n_words:
        q = tuple(int(v) for v in rng.integers(0, n_phonemes, per_word))
        if q not in seqs:
            seqs.append(q)
    seq = np.array(seqs)
    pattern = rng.standard_normal((n_phonemes, latent_dim))
    freqs = np.exp(np.linspace(np.log(4.0), np.log(25.0), n_phonemes))[rng.permutation(n_phonemes)]
    phases = rng.uniform(0, 2 * np.pi, n_phonemes)
    t = np.arange(n_times) / sfreq
    dur = n_times / sfreq
    centres = np.linspace(0.15, 0.8, per_word) * dur
    phi = np.empty((n_words, n_times, per_word))
    for k in range(n_words):
        for i, q in enumerate(seq[k]):
            phi[k, :, i] = _gabor(t, centres[i], freqs[q], phases[q], dur)
    codes = np.transpose(pattern[seq], (0, 2, 1))  # (words, latent, per_word)
    return phi, codes, seq


def _line_basis(n_times: int, sfreq: float, line_freq: float) -> np.ndarray:
    t = np.arange(n_times) / sfreq
    cols = []
    for h in (1, 2):
        if h * line_freq < sfreq / 2:
            cols += [np.cos(2 * np.pi * h * line_freq * t), np.sin(2 * np.pi * h * line_freq * t)]
    return np.stack(cols, 1) if cols else np.zeros((n_times, 0))


# ----------------------------------------------------------------------------- layout
def _layout(n_contacts: int, n_region: int, regions: Sequence[str], rng: np.random.Generator, sid: str):
    """Contact names, shaft, region label and position (mm) for one subject."""
    n_reg = len(regions)
    need = n_region + n_reg
    if n_contacts < need:
        raise DataError(f"synthesize_seeg: {sid} has {n_contacts} contacts but {n_region} region contacts on "
                        f"{n_reg} region shafts need >= {need} (one white-matter contact ends each region shaft); "
                        f"fix: raise n_channels or lower region_channels")
    per = [n_region // n_reg + (1 if i < n_region % n_reg else 0) for i in range(n_reg)]
    shafts: list[list[str]] = []  # region label per contact, shaft by shaft
    for i, reg in enumerate(regions):
        shafts.append([reg] * per[i] + ["WM"])
    rest = n_contacts - need
    k = 0
    while rest > 0:
        m = min(_CONTACTS_PER_SHAFT, rest)
        lab = _OTHER_REGIONS[k % len(_OTHER_REGIONS)]
        shafts.append([lab] * (m - 1) + ["WM"] if m > 1 else [lab])
        rest -= m
        k += 1
    letters = string.ascii_uppercase
    names, group, region, pos = [], [], [], []
    for si, labs in enumerate(shafts):
        shaft = letters[si % 26] * (1 + si // 26)
        entry = rng.uniform(-60, 60, 3)
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        for ci, lab in enumerate(labs):
            names.append(f"{shaft}{ci + 1}")
            group.append(shaft)
            region.append(lab)
            pos.append(entry + 3.5 * ci * direction)
    return names, group, region, np.array(pos)


def _montage_kwargs():
    """DigMontage frame + BIDSPath space accepted by mne-bids for iEEG without an MRI."""
    return {"coord_frame": "mni_tal"}, {"space": "fsaverage"}


# ----------------------------------------------------------------------------- main entry
def synthesize_seeg(
    out_dir: str | os.PathLike,
    n_subjects: int = 3,
    n_channels: int | Sequence[int] = (12, 15, 18),
    n_words: int = 61,
    trials_per_word: int = 20,
    runs: int = 2,
    sfreq: float = 1000.0,
    epoch_s: float = 3.0,
    iti_s: float = 0.5,
    line_freq: float = 50.0,
    region_channels: int | Sequence[int] = 10,
    regions: Sequence[str] = ("vSMC", "STG"),
    latent_dim: int = 6,
    n_basis: int = 8,
    n_phonemes: int = 12,
    phonemes_per_word: int = 4,
    snr: float = 0.6,
    noise: float = 1.0,
    common_noise: float = 1.0,
    line_noise: float = 2.0,
    format: str = "BrainVision",
    oracle_trials: int = 20,
    task: str = "words",
    seed: int = 0,
    overwrite: bool = False,
    envelope_snr: float = 0.0,
    hg_band: Sequence[float] = (70.0, 150.0),
    onset_jitter_s: float = 0.0,
    jitter_steps: int = 9,
    phase_points: int = 256,
) -> Path:
    """Write a synthetic BIDS-iEEG word-production dataset with known ground truth; return its root.

    Args:
        out_dir: BIDS root to create (built next to it, then renamed into place).
        n_subjects: Subjects ``sub-01`` ... (different contact counts and mixing each).
        n_channels: Monopolar sEEG contacts per subject: one int (subject s gets ``n + 3 s``) or one
            per subject.
        n_words: Vocabulary size (``word01`` ...); chance accuracy is ``1 / n_words``.
        trials_per_word: Trials of each word per subject, spread evenly over ``runs``.
        runs: Recording runs per subject (``run-1`` ...), each its own file.
        sfreq: Sampling rate (Hz).
        epoch_s: Duration of the word-locked response after each onset (s).
        iti_s: Minimum silence between the end of one response and the next onset (s), plus a
            uniform 0-0.5 s jitter.
        line_freq: Mains frequency (Hz): line noise at it and its 2nd harmonic; also
            ``PowerLineFrequency`` in the sidecar.
        region_channels: Contacts carrying the word signal (int or one per subject), split over
            ``regions`` (one shaft each, closed by a white-matter contact).
        regions: Region labels of the signal-carrying contacts (electrodes.tsv ``region``).
        latent_dim: Dimension of the latent spatial patterns (the rank of ``W_s``).
        n_basis: Bursts per word when ``n_phonemes = 0`` (independent word codes).
        n_phonemes: Size of the gesture inventory words are spelled from; 0 gives every word an
            independent code over ``n_basis`` shared bursts instead.
        phonemes_per_word: Gestures per word (one per word-locked slot).
        snr: RMS of the word signal on region contacts over the epoch / RMS of a contact's own
            background noise (``noise``).
        noise: Standard deviation of each contact's own 1/f background (model units; 1 unit = 10 uV).
        common_noise: Standard deviation of the common-reference 1/f noise, relative to ``noise``.
        line_noise: Mean amplitude of the line noise, relative to ``noise``.
        format: ``"BrainVision"`` (float32, lossless here) or ``"EDF"`` (16-bit), mne-bids ``format=``.
        oracle_trials: Fresh trials per word and subject used to measure the oracle accuracy.
        task: BIDS task label.
        seed: Random seed; the same arguments give identical files.
        overwrite: Replace ``out_dir`` if it exists with other parameters.
        envelope_snr: RMS of the high-gamma word signal on region contacts / a contact's own noise
            RMS; 0 (default) = no envelope coding.
        hg_band: Carrier frequencies of the gestures' high-gamma bursts (Hz), spread over this band;
            must lie below Nyquist.
        onset_jitter_s: Maximum shift of a trial's response relative to its event onset (s); 0 = none.
        jitter_steps: Number of equally spaced shifts in ``[-onset_jitter_s, onset_jitter_s]``.
        phase_points: Phase grid of the oracle's integral over the carrier phase.

    Returns:
        The BIDS root.
    """
    out = Path(out_dir)
    params = {k: v for k, v in locals().items() if k not in ("out_dir", "overwrite", "out")}
    nuisance = envelope_snr > 0 or onset_jitter_s > 0
    if not nuisance:  # the files of the linear-Gaussian world stay those of earlier versions, byte for byte
        for k in ("envelope_snr", "hg_band", "onset_jitter_s", "jitter_steps", "phase_points"):
            params.pop(k)
    params = json.loads(json.dumps(params, default=list))
    if synthetic_is_current(out, params, "truth.json", overwrite):
        return out
    if min(n_subjects, n_words, trials_per_word, runs, latent_dim, n_basis, oracle_trials) < 1:
        raise DataError("synthesize_seeg: n_subjects, n_words, trials_per_word, runs, latent_dim, n_basis and "
                        "oracle_trials must be >= 1; fix: pass positive values")
    if format not in ("BrainVision", "EDF"):
        raise DataError(f"synthesize_seeg: format={format!r}; fix: use 'BrainVision' or 'EDF'")
    if not regions:
        raise DataError("synthesize_seeg: regions is empty; fix: name at least one region, e.g. ['vSMC', 'STG']")
    if envelope_snr < 0 or onset_jitter_s < 0 or jitter_steps < 1 or phase_points < 8:
        raise DataError("synthesize_seeg: envelope_snr and onset_jitter_s must be >= 0, jitter_steps >= 1 and "
                        "phase_points >= 8; fix: pass such values")
    if envelope_snr > 0 and not (0 < hg_band[0] < hg_band[1] < sfreq / 2):
        raise DataError(f"synthesize_seeg: hg_band {list(hg_band)} must lie in (0, Nyquist = {sfreq / 2} Hz); fix: a "
                        f"higher sfreq (e.g. 500) or a lower band")

    def per_subject(v, name, step):
        if isinstance(v, (int, np.integer)):
            return [int(v) + step * s for s in range(n_subjects)]
        v = [int(x) for x in v]
        if len(v) != n_subjects:
            raise DataError(f"synthesize_seeg: {name} has {len(v)} entries for {n_subjects} subjects; "
                            f"fix: give one per subject or a single int")
        return v

    n_ch = per_subject(n_channels, "n_channels", 3)
    n_rc = per_subject(region_channels, "region_channels", 0)
    words = seeg_word_labels(n_words)
    n_times = int(round(epoch_s * sfreq))

    ss = np.random.SeedSequence(seed)
    rng_fn, rng_oracle, *rng_subs = [np.random.default_rng(s) for s in ss.spawn(2 + n_subjects)]
    if n_phonemes > 0:
        phi, codes, phoneme_seq = _phoneme_words(n_times, sfreq, n_words, n_phonemes, phonemes_per_word, latent_dim,
                                                 rng_fn)
    else:
        phi = np.broadcast_to(_basis(n_times, sfreq, n_basis, rng_fn), (n_words, n_times, n_basis))
        codes = rng_fn.standard_normal((n_words, latent_dim, n_basis))
        phoneme_seq = np.zeros((n_words, 0), np.int64)
    n_basis = phi.shape[2]
    if nuisance:
        # A separate stream, spawned after the others: the linear-Gaussian part keeps its draws.
        rng_hg = np.random.default_rng(ss.spawn(1)[0])
        shifts = (np.round(np.linspace(-onset_jitter_s, onset_jitter_s, jitter_steps) * sfreq).astype(np.int64)
                  if onset_jitter_s > 0 and jitter_steps > 1 else np.zeros(1, np.int64))
        hg_freqs = np.linspace(hg_band[0], hg_band[1], max(n_phonemes, n_basis))[rng_hg.permutation(max(n_phonemes, n_basis))]
        gestures = phoneme_seq if n_phonemes > 0 else np.tile(np.arange(n_basis), (n_words, 1))
        env = _envelopes(phi)
        psi_c, psi_s = _carriers(env, hg_freqs[gestures], sfreq)  # (words, time, J) each
    truth: dict[str, np.ndarray] = {
        "format": np.array(TRUTH_FORMAT),
        "words": np.array(words),
        "phi": np.ascontiguousarray(phi),
        "codes": codes,
        "phonemes": phoneme_seq,
        "sfreq": np.array(float(sfreq)),
        "line_freq": np.array(float(line_freq)),
        "subjects": np.array([f"sub-{s + 1:02d}" for s in range(n_subjects)]),
        "description": np.array(
            "epoch X (contacts x time) of word k = A[k] @ phi[k].T + noise; A[k] = <sub>.mixing @ codes[k] on "
            "<sub>.region_rows; noise cov = <sub>.spatial_cov (x) toeplitz(<sub>.temporal_autocov) plus line "
            "noise; phonemes[k] = the gesture sequence of word k (no columns: independent word codes); values in "
            "model units (1 unit = 1e-5 V in the files)."),
    }

    import mne
    from mne_bids import BIDSPath, write_raw_bids

    montage_kw, space_kw = _montage_kwargs()
    oracle: dict[str, dict] = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for s in range(n_subjects):
            sid = f"{s + 1:02d}"
            sub = f"sub-{sid}"
            rng = rng_subs[s]
            names, group, region, pos = _layout(n_ch[s], n_rc[s], list(regions), rng, sub)
            C = len(names)
            reg_rows = np.flatnonzero(np.isin(region, list(regions)))
            mixing = rng.standard_normal((reg_rows.size, latent_dim)) / math.sqrt(latent_dim)
            A = np.zeros((n_words, C, n_basis))
            A[:, reg_rows] = np.einsum("cl,klj->kcj", mixing, codes)
            sig_rms = math.sqrt(np.mean([np.mean((A[k, reg_rows] @ phi[k].T) ** 2) for k in range(n_words)]))
            scale = snr * noise / sig_rms
            A *= scale
            if nuisance:
                B = np.zeros((n_words, C, n_basis))
                if envelope_snr > 0:
                    B[:, reg_rows] = np.einsum("cl,klj->kcj", mixing, codes)
                    hg_rms = math.sqrt(np.mean([np.mean((B[k, reg_rows] @ psi_c[k].T) ** 2) for k in range(n_words)]))
                    B *= envelope_snr * noise / hg_rms
                truth[f"{sub}.hg_means"] = B  # high-gamma part: B[k] @ (cos th psi_c[k] + sin th psi_s[k]).T
            gains = np.exp(0.2 * rng.standard_normal(C))
            S = noise ** 2 * (np.diag(gains ** 2) + common_noise ** 2 * np.ones((C, C)))
            line_amp = line_noise * noise * np.exp(0.3 * rng.standard_normal(C))
            truth[f"{sub}.channels"] = np.array(names)
            truth[f"{sub}.region"] = np.array(region)
            truth[f"{sub}.region_rows"] = reg_rows
            truth[f"{sub}.mixing"] = mixing * scale
            truth[f"{sub}.means"] = A  # (words, contacts, n_basis): class mean = means[k] @ phi[k].T
            truth[f"{sub}.spatial_cov"] = S
            truth[f"{sub}.line_amplitude"] = line_amp

            montage = mne.channels.make_dig_montage(ch_pos=dict(zip(names, pos / 1000.0)), **montage_kw)
            # trial schedule: every run holds an equal share of every word, shuffled
            per_run = np.array_split(np.arange(trials_per_word), runs)
            for r in range(runs):
                seq = np.repeat(np.arange(n_words), len(per_run[r]))
                seq = seq[rng.permutation(seq.size)]
                gaps = epoch_s + iti_s + rng.uniform(0, 0.5, seq.size)
                onsets = 1.0 + np.concatenate([[0.0], np.cumsum(gaps[:-1])])
                onset_samp = np.round(onsets * sfreq).astype(np.int64)
                n_samp = int(onset_samp[-1] + n_times + round(1.0 * sfreq))
                L = np.linalg.cholesky(S)
                data = L @ _background(rng, (C, n_samp), sfreq)
                t = np.arange(n_samp) / sfreq
                ph = rng.uniform(0, 2 * np.pi)
                line = np.cos(2 * np.pi * line_freq * t + ph) + 0.3 * np.cos(2 * np.pi * 2 * line_freq * t + 2 * ph)
                data += line_amp[:, None] * line[None, :]
                for k, o in zip(seq, onset_samp):
                    if not nuisance:
                        data[:, o:o + n_times] += A[k] @ phi[k].T
                        continue
                    tau, th = int(rng_hg.choice(shifts)), rng_hg.uniform(0, 2 * np.pi)
                    data[:, o:o + n_times] += _word_signal(A[k], B[k], phi[k], psi_c[k], psi_s[k], tau, th)
                info = mne.create_info(names, sfreq, ch_types="seeg")
                raw = mne.io.RawArray(data * _UNIT, info, verbose=False)
                raw.info["line_freq"] = line_freq
                with warnings.catch_warnings():  # no fiducials in a template (fsaverage) frame: expected
                    warnings.simplefilter("ignore", RuntimeWarning)
                    raw.set_montage(montage, verbose=False)
                events = np.stack([onset_samp, np.zeros_like(onset_samp), seq + 1], 1)
                bp = BIDSPath(subject=sid, task=task, run=r + 1, datatype="ieeg", root=tmp)
                write_raw_bids(raw, bp, events=events, event_id={w: i + 1 for i, w in enumerate(words)},
                               format=format, allow_preload=True, overwrite=False, verbose=False)
                del data, raw
            _add_electrode_columns(tmp / sub, names, group, region)
            if nuisance:
                acc, se, changed = _oracle_marginal(rng_oracle, A, B, S, phi, psi_c, psi_s, shifts, sfreq, line_freq,
                                                    line_amp, oracle_trials, phase_points)
            else:
                acc, se = _oracle(rng_oracle, A, S, phi, sfreq, line_freq, line_amp, oracle_trials)
            oracle[sub] = {"oracle_accuracy": acc, "oracle_se": se, "n_contacts": C,
                           "n_region_contacts": int(reg_rows.size)}
            if nuisance:
                oracle[sub]["oracle_quadrature_changed"] = changed
        truth["temporal_autocov"] = _autocov(n_times, sfreq)
        if nuisance:
            truth.update({"hg_psi_cos": psi_c, "hg_psi_sin": psi_s, "hg_freqs": hg_freqs, "shifts": shifts})
        np.savez(tmp / "truth.npz", **truth)
        mean_acc = float(np.mean([o["oracle_accuracy"] for o in oracle.values()]))
        rule = ("Bayes-optimal linear discriminant with the true class means and noise covariance (line "
                "noise projected out), on the raw monopolar epoch [onset, onset + epoch_s)")
        if nuisance:
            rule = ("Bayes rule with the true model, on the raw monopolar epoch [onset, onset + epoch_s): the Gaussian "
                    "likelihood (true noise covariance, line noise projected out) averaged exactly over the onset "
                    "shifts (uniform on 'shifts' samples of truth.npz) and over the carrier phase (trapezoid rule, "
                    f"{phase_points} phases; 'oracle_quadrature_changed' per subject = decisions that change with "
                    f"{phase_points // 2} phases, 0 = converged): exact Bayes accuracy on the oracle trials")
        (tmp / "truth.json").write_text(json.dumps({
            "generator": "litbrain.datamodules.synthesize_seeg", "truth_format": TRUTH_FORMAT,
            "oracle": rule,
            "oracle_accuracy": mean_acc, "chance": 1.0 / n_words, "subjects": oracle, "words": words,
            "regions": list(regions), "n_times": n_times, "parameters": params}, indent=1))
        (tmp / ".bidsignore").write_text("truth.npz\ntruth.json\n")
    return out


def _add_electrode_columns(sub_dir: Path, names: list[str], group: list[str], region: list[str]) -> None:
    """Add ``group`` (shaft) and ``region`` columns to the subject's electrodes.tsv files."""
    import pandas as pd

    files = sorted(sub_dir.rglob("*_electrodes.tsv"))
    if not files:
        raise RuntimeError(f"{sub_dir}: mne-bids wrote no electrodes.tsv")
    g, r = dict(zip(names, group)), dict(zip(names, region))
    for f in files:
        df = pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)
        df["group"] = [g[n] for n in df["name"]]
        df["region"] = [r[n] for n in df["name"]]
        df.to_csv(f, sep="\t", index=False)


def _oracle_filters(n_times: int, sfreq: float, line_freq: float, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per word k: F_k = Q Phi_k (time x J) and G_k = Phi_k^T Q Phi_k, Q = Sigma_t^-1 with the line subspace
    projected out. ``phi`` is (words, time, J)."""
    from scipy.linalg import solve_toeplitz

    r = _autocov(n_times, sfreq)
    Lb = _line_basis(n_times, sfreq, line_freq)
    n_words, _, J = phi.shape
    K = solve_toeplitz(r, np.concatenate([phi.transpose(1, 0, 2).reshape(n_times, n_words * J), Lb], 1))
    Kp, Kl = K[:, :n_words * J], K[:, n_words * J:]
    if Lb.shape[1]:
        Kp = Kp - Kl @ np.linalg.solve(Lb.T @ Kl, Lb.T @ Kp)
    F = Kp.reshape(n_times, n_words, J).transpose(1, 0, 2)
    return F, np.einsum("ktj,kti->kji", phi, F)


def _oracle(rng: np.random.Generator, A: np.ndarray, S: np.ndarray, phi: np.ndarray, sfreq: float,
            line_freq: float, line_amp: np.ndarray, trials: int) -> tuple[float, float]:
    """Accuracy (and its standard error) of the Bayes rule on fresh trials of one subject."""
    n_words, C, _ = A.shape
    n_times = phi.shape[1]
    F, G = _oracle_filters(n_times, sfreq, line_freq, phi)
    Sinv = np.linalg.inv(S)
    H = np.einsum("cd,kdj->kcj", Sinv, A)
    bias = 0.5 * np.einsum("kcj,kcj->k", H, np.einsum("kci,kij->kcj", A, G))
    L = np.linalg.cholesky(S)
    t = np.arange(n_times) / sfreq
    correct = 0
    total = 0
    for k in range(n_words):
        noise = np.einsum("cd,ndt->nct", L, _background(rng, (trials, C, n_times), sfreq))
        ph = rng.uniform(0, 2 * np.pi, trials)[:, None]
        line = np.cos(2 * np.pi * line_freq * t + ph) + 0.3 * np.cos(2 * np.pi * 2 * line_freq * t + 2 * ph)
        x = (A[k] @ phi[k].T)[None] + noise + line_amp[None, :, None] * line[:, None, :]
        scores = np.einsum("kcj,nct,ktj->nk", H, x, F, optimize=True) - bias[None]
        correct += int(np.sum(scores.argmax(1) == k))
        total += trials
    acc = correct / total
    return float(acc), float(math.sqrt(max(acc * (1 - acc), 1e-12) / total))


# ----------------------------------------------------------------------------- envelope coding + jitter
def _envelopes(phi: np.ndarray) -> np.ndarray:
    """The Gaussian envelope of every burst of ``phi`` (words, time, J): |analytic signal|, unit norm."""
    from scipy.signal import hilbert

    env = np.abs(hilbert(phi, axis=1))
    return env / (np.linalg.norm(env, axis=1, keepdims=True) + 1e-12)


def _carriers(env: np.ndarray, freqs: np.ndarray, sfreq: float) -> tuple[np.ndarray, np.ndarray]:
    """In-phase and quadrature high-gamma bursts: ``env * cos / sin(2 pi f t)``, ``freqs`` (words, J)."""
    t = np.arange(env.shape[1]) / sfreq
    arg = 2 * np.pi * freqs[:, None, :] * t[None, :, None]
    c, s = env * np.cos(arg), env * np.sin(arg)
    return (c / (np.linalg.norm(c, axis=1, keepdims=True) + 1e-12),
            s / (np.linalg.norm(s, axis=1, keepdims=True) + 1e-12))


def _shift(x: np.ndarray, tau: int) -> np.ndarray:
    """``x`` (time, ...) delayed by ``tau`` samples inside the same window (zeros shifted in)."""
    if tau == 0:
        return x
    out = np.zeros_like(x)
    if tau > 0:
        out[tau:] = x[:-tau]
    else:
        out[:tau] = x[-tau:]
    return out


def _word_signal(A: np.ndarray, B: np.ndarray, phi: np.ndarray, psi_c: np.ndarray, psi_s: np.ndarray,
                 tau: int, theta: float) -> np.ndarray:
    """One trial's word response (contacts x time): shifted by ``tau``, carrier phase ``theta``."""
    hg = math.cos(theta) * psi_c + math.sin(theta) * psi_s
    return A @ _shift(phi, tau).T + B @ _shift(hg, tau).T


def _whitener(n_times: int, sfreq: float, line_freq: float) -> np.ndarray:
    """Q = Sigma_t^-1 with the line-noise subspace projected out (dense, time x time)."""
    from scipy.linalg import toeplitz

    Q = np.linalg.inv(toeplitz(_autocov(n_times, sfreq)))
    Lb = _line_basis(n_times, sfreq, line_freq)
    if Lb.shape[1]:
        QL = Q @ Lb
        Q = Q - QL @ np.linalg.solve(Lb.T @ QL, QL.T)
    return Q


def _oracle_marginal(rng: np.random.Generator, A: np.ndarray, B: np.ndarray, S: np.ndarray, phi: np.ndarray,
                     psi_c: np.ndarray, psi_s: np.ndarray, shifts: np.ndarray, sfreq: float, line_freq: float,
                     line_amp: np.ndarray, trials: int, phase_points: int) -> tuple[float, float, int]:
    """Bayes accuracy (its standard error, and decisions changed by halving the phase grid) on fresh
    trials, marginalising the onset shift (exactly) and the carrier phase (trapezoid rule)."""
    from scipy.special import logsumexp

    n_words, C, J = A.shape
    n_times = phi.shape[1]
    Q = _whitener(n_times, sfreq, line_freq)
    Sinv = np.linalg.inv(S)
    # Templates per (word, shift): three components (low-frequency, carrier cos, carrier sin), J columns each.
    cols = np.stack([np.stack([_shift(m[k], int(tau)) for tau in shifts]) for m in (phi, psi_c, psi_s)
                     for k in range(n_words)]).reshape(3, n_words, len(shifts), n_times, J)
    spatial = np.stack([A, B, B])  # (3, words, C, J)
    H = np.einsum("cd,akdj->akcj", Sinv, spatial)  # S^-1 times each component's spatial pattern
    Fq = np.einsum("ts,akqsj->akqtj", Q, cols, optimize=True)  # Q times each template column
    # Gram of the components per (word, shift): <m_a, m_b> = sum_ji (H_a^T M_b)_ji (cols_a^T Q cols_b)_ji
    spat = np.einsum("akcj,bkci->kabji", H, spatial)
    temp = np.einsum("akqtj,bkqti->kqabji", Fq, cols, optimize=True)
    G = np.einsum("kabji,kqabji->kqab", spat, temp)
    th = np.linspace(0, 2 * np.pi, phase_points, endpoint=False)
    basis = np.stack([np.ones_like(th), np.cos(th), np.sin(th)])  # (3, phases)
    quad = np.einsum("ap,kqab,bp->kqp", basis, G, basis)
    L = np.linalg.cholesky(S)
    t = np.arange(n_times) / sfreq
    correct = np.zeros(2, np.int64)
    total = 0
    for k in range(n_words):
        noise = np.einsum("cd,ndt->nct", L, _background(rng, (trials, C, n_times), sfreq))
        ph = rng.uniform(0, 2 * np.pi, trials)[:, None]
        line = np.cos(2 * np.pi * line_freq * t + ph) + 0.3 * np.cos(2 * np.pi * 2 * line_freq * t + 2 * ph)
        taus = rng.choice(shifts, trials)
        thetas = rng.uniform(0, 2 * np.pi, trials)
        x = noise + line_amp[None, :, None] * line[:, None, :]
        for n in range(trials):
            x[n] += _word_signal(A[k], B[k], phi[k], psi_c[k], psi_s[k], int(taus[n]), float(thetas[n]))
        lin = np.einsum("akcj,nct,akqtj->nkqa", H, x, Fq, optimize=True)  # <m_a, x> per (word, shift)
        loglik = np.einsum("nkqa,ap->nkqp", lin, basis) - 0.5 * quad[None]
        for i, step in enumerate((1, 2)):  # the full phase grid, and every other phase
            score = logsumexp(loglik[..., ::step].reshape(trials, n_words, -1), axis=-1)
            pred = score.argmax(1)
            if i == 0:
                full = pred
            else:
                correct[1] += int(np.sum(pred != full))
            if i == 0:
                correct[0] += int(np.sum(pred == k))
        total += trials
    acc = correct[0] / total
    return float(acc), float(math.sqrt(max(acc * (1 - acc), 1e-12) / total)), int(correct[1])


# ----------------------------------------------------------------------------- truth access
def load_seeg_truth(bids_root: str | os.PathLike) -> dict:
    """``truth.json`` of a synthetic dataset (oracle accuracies, chance, parameters)."""
    path = Path(bids_root) / "truth.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; fix: the oracle needs a dataset written by synthesize_seeg")
    t = json.loads(path.read_text())
    if t.get("truth_format") != TRUTH_FORMAT:
        raise DataError(f"{path}: unknown truth format {t.get('truth_format')}; fix: regenerate with synthesize_seeg")
    return t


def seeg_oracle_accuracy(bids_root: str | os.PathLike, subject: str | None = None) -> float:
    """The oracle's accuracy for one subject (``"sub-01"``) or averaged over subjects (``None``)."""
    t = load_seeg_truth(bids_root)
    if subject is None:
        return float(t["oracle_accuracy"])
    if subject not in t["subjects"]:
        raise DataError(f"{Path(bids_root) / 'truth.json'}: no subject {subject!r} (available: "
                        f"{list(t['subjects'])}); fix: pick one of those")
    return float(t["subjects"][subject]["oracle_accuracy"])
