import numpy as np
import pytest
import torch

pytest.importorskip("mne_bids")

from litbrain.datamodules import DataError, SeegDataModule  # noqa: E402


def test_train_batches(tiny_seeg_prepared):
    dm = SeegDataModule(str(tiny_seeg_prepared), batch_size=12)
    dm.setup("fit")
    assert dm.subjects == ["sub-01", "sub-02", "sub-03"]
    assert dm.subject_channels == {"sub-01": 4, "sub-02": 5, "sub-03": 6}
    assert dm.n_labels == 6 and dm.n_times == 250 and dm.sfreq == 250.0
    batches = list(dm.train_dataloader())
    assert len(batches) == 48 // 4
    for b in batches:
        assert list(b) == ["subject", "brain", "label"]
        assert list(b["brain"]) == dm.subjects
        for s, x in b["brain"].items():
            assert x.dtype == torch.float32 and x.shape == (4, dm.subject_channels[s], 250)
        assert b["subject"].dtype == torch.int64 and b["subject"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert b["label"].dtype == torch.int64 and b["label"].shape == (12,)
        assert b["label"].min() >= 0 and b["label"].max() < 6
    # each row is a prepared row with its label
    brain = np.load(tiny_seeg_prepared / "sub-02" / "train_brain.npy").astype(np.float32)
    lab = np.load(tiny_seeg_prepared / "sub-02" / "train_label.npy")
    b = batches[0]
    for x, y in zip(b["brain"]["sub-02"], b["label"][b["subject"] == 1]):
        (row,) = [i for i in range(len(brain)) if np.array_equal(brain[i], x.numpy())]
        assert lab[row] == int(y)
    # adapter convention: channel axis last
    from litbrain.nn import SubjectAdapter

    ad = SubjectAdapter(dm.subject_channels, 16)
    out = torch.cat([ad(x.transpose(1, 2), s) for s, x in b["brain"].items()])
    assert out.shape == (12, 250, 16)


def test_eval_loaders(tiny_seeg_prepared):
    dm = SeegDataModule(str(tiny_seeg_prepared), subjects=["sub-03", "sub-01"], batch_size=4)
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert len(loaders) == 2
    for i, (s, dl) in enumerate(zip(dm.subjects, loaders)):
        rows = list(dl)
        assert sum(len(b["label"]) for b in rows) == 6
        for b in rows:
            assert list(b["brain"]) == [s] and (b["subject"] == i).all()
        got = torch.cat([b["label"] for b in rows]).numpy()
        np.testing.assert_array_equal(got, np.load(tiny_seeg_prepared / s / "test_label.npy"))


def test_label_fraction(tiny_seeg_prepared):
    dm = SeegDataModule(str(tiny_seeg_prepared), batch_size=12, label_fraction=0.25, seed=1)
    n = dm.n_rows("train")
    assert n == {"sub-01": 48, "sub-02": 48, "sub-03": 48}  # every epoch still served
    for sp in dm._get_splits("train"):
        kept = sp.label[sp.label >= 0]
        assert (sp.label == -1).sum() == 48 - 12 and np.bincount(kept).tolist() == [2] * 6  # stratified
    again = SeegDataModule(str(tiny_seeg_prepared), batch_size=12, label_fraction=0.25, seed=1)
    np.testing.assert_array_equal(again._get_splits("train")[0].label, dm._get_splits("train")[0].label)
    labels = torch.cat([b["label"] for b in dm.train_dataloader()])
    assert (labels == -1).any() and (labels >= 0).any()
    with pytest.raises(DataError, match="label_fraction"):
        SeegDataModule(str(tiny_seeg_prepared), label_fraction=0.0)


def test_not_a_seeg_dataset(tiny_prepared):
    with pytest.raises(DataError, match="not a prepared sEEG dataset"):
        SeegDataModule(str(tiny_prepared))
