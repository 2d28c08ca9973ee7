import numpy as np
import pytest
import torch
from litbrain.datamodules import FmriDataModule, MultiSubjectBatchSampler
from litbrain.datamodules.io import MmapRows
from torch.utils.data import DistributedSampler


def _epoch(dm, epoch):
    dl = dm.train_dataloader()
    dl.sampler.set_epoch(epoch)
    return list(dl)


def test_attributes(tiny_prepared):
    dm = FmriDataModule(str(tiny_prepared), subjects=["sub-02", "sub-01"])
    assert dm.subjects == ["sub-02", "sub-01"]
    assert dm.subject_voxels == {"sub-02": 242, "sub-01": 183}
    assert dm.image_embedding_shape == (16,) and dm.text_embedding_dim == 8
    assert len(dm.stimulus_ids) == dm.n_stimuli == 330


def test_train_batch_composition(tiny_prepared):
    dm = FmriDataModule(str(tiny_prepared), batch_size=13)  # 13 // 3 = 4 per subject
    dm.setup("fit")
    emb = np.load(tiny_prepared / "image_embedding.npy")
    txt = np.load(tiny_prepared / "text_embedding.npy")
    batches = _epoch(dm, 0)
    assert len(batches) == len(dm.train_dataloader()) == 90 // 4
    for b in batches:
        assert list(b) == ["subject", "brain", "stimulus", "image_embedding", "text_embedding"]
        assert list(b["brain"]) == dm.subjects
        for s, x in b["brain"].items():
            assert x.dtype == torch.float32 and x.shape == (4, dm.subject_voxels[s])
        assert b["subject"].dtype == torch.int64 and b["subject"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert b["stimulus"].dtype == torch.int64 and b["stimulus"].shape == (12,)
        assert b["image_embedding"].dtype == torch.float32 and b["image_embedding"].shape == (12, 16)
        assert b["text_embedding"].shape == (12, 8)
        np.testing.assert_array_equal(b["image_embedding"].numpy(), emb[b["stimulus"].numpy()])
        np.testing.assert_array_equal(b["text_embedding"].numpy(), txt[b["stimulus"].numpy()])
    # each brain row is the prepared row of that subject showing that stimulus
    b = batches[0]
    for si, s in enumerate(dm.subjects):
        stim_file = np.load(tiny_prepared / s / "train_stimulus.npy")
        brain_file = np.load(tiny_prepared / s / "train_brain.npy")
        for x, st in zip(b["brain"][s], b["stimulus"][b["subject"] == si]):
            (row,) = np.flatnonzero(stim_file == int(st))
            np.testing.assert_array_equal(x.numpy(), brain_file[row].astype(np.float32))
    # one epoch covers every training row of every subject exactly once (equal sizes here)
    for si, s in enumerate(dm.subjects):
        seen = np.concatenate([b["stimulus"][b["subject"] == si].numpy() for b in batches])
        assert len(seen) == len(set(seen.tolist())) == 88


def test_reshuffle_and_seed_determinism(tiny_prepared):
    def order(seed, epoch):
        dm = FmriDataModule(str(tiny_prepared), batch_size=6, seed=seed)
        return np.concatenate([b["stimulus"].numpy() for b in _epoch(dm, epoch)])

    a0, a0b, a1, b0 = order(0, 0), order(0, 0), order(0, 1), order(1, 0)
    np.testing.assert_array_equal(a0, a0b)
    assert not np.array_equal(a0, a1) and not np.array_equal(a0, b0)
    assert sorted(a0.tolist()) == sorted(a1.tolist())  # same rows, new order


def test_train_fraction_keeps_first_trials_in_session_order(tiny_prepared):
    dm = FmriDataModule(str(tiny_prepared), subjects=["sub-03"], batch_size=3, train_fraction=0.1)
    assert dm.n_rows("train") == {"sub-03": 9}
    stim_file = np.load(tiny_prepared / "sub-03" / "train_stimulus.npy")
    sess = np.load(tiny_prepared / "sub-03" / "train_session.npy")
    assert np.all(np.diff(sess) >= 0)
    seen = np.concatenate([b["stimulus"].numpy() for b in _epoch(dm, 0)])
    assert sorted(seen.tolist()) == sorted(stim_file[:9].tolist())


def test_eval_loaders_one_per_subject(tiny_prepared):
    dm = FmriDataModule(str(tiny_prepared), batch_size=8)
    dm.setup("test")
    for split, loaders in (("val", dm.val_dataloader()), ("test", dm.test_dataloader()),
                           ("test", dm.predict_dataloader())):
        assert isinstance(loaders, list) and len(loaders) == 3
        for i, (s, dl) in enumerate(zip(dm.subjects, loaders)):
            batches = list(dl)
            assert all(list(b["brain"]) == [s] and (b["subject"] == i).all() for b in batches)
            stim = torch.cat([b["stimulus"] for b in batches]).numpy()
            np.testing.assert_array_equal(stim, np.load(tiny_prepared / s / f"{split}_stimulus.npy"))
            brain = torch.cat([b["brain"][s] for b in batches]).numpy()
            np.testing.assert_array_equal(brain, np.load(tiny_prepared / s / f"{split}_brain.npy").astype(np.float32))
            assert [len(b["stimulus"]) for b in batches][0] == 8


def test_distributed_shares_are_disjoint():
    sizes, per = [50, 37, 20], 4
    full = list(MultiSubjectBatchSampler(sizes, per, seed=3))
    ranks = [list(MultiSubjectBatchSampler(sizes, per, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(full) // 2 == 6
    # together the ranks cover the global batch list, each batch once
    got = sorted(tuple(b) for r in ranks for b in r)
    assert got == sorted(tuple(b) for b in full[: 2 * 6])
    offsets = np.cumsum([0] + sizes)
    for b in full:
        groups = np.searchsorted(offsets, b, side="right") - 1
        assert np.bincount(groups, minlength=3).tolist() == [per] * 3
    # the largest subject is covered once per epoch without repeats
    big = np.concatenate([b[:per] for b in full])
    assert len(set(big.tolist())) == len(big) == 48


def test_lightning_keeps_the_sampler_under_ddp(tiny_prepared):
    import lightning.pytorch as pl

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    dm = FmriDataModule(str(tiny_prepared), batch_size=6)
    dm.trainer = trainer
    dl = dm.train_dataloader()
    assert isinstance(dl.sampler, DistributedSampler) and dl.sampler.num_replicas == 2
    assert not trainer._data_connector._requires_distributed_sampler(dl)


def test_lightning_fit_calls_set_epoch_and_validates_per_subject(tiny_prepared):
    import lightning.pytorch as pl

    class Probe(pl.LightningModule):
        def __init__(self, voxels):
            super().__init__()
            self.heads = torch.nn.ModuleDict({s: torch.nn.Linear(v, 16) for s, v in voxels.items()})
            self.seen, self.val_idx = {}, set()

        def forward(self, batch):
            return torch.cat([self.heads[s](x) for s, x in batch["brain"].items()])

        def training_step(self, batch, i):
            self.seen.setdefault(self.current_epoch, []).append(batch["stimulus"].clone())
            loss = torch.nn.functional.mse_loss(self(batch), batch["image_embedding"])
            self.log("loss", loss, batch_size=len(batch["subject"]))
            return loss

        def validation_step(self, batch, i, dataloader_idx=0):
            self.val_idx.add((dataloader_idx, int(batch["subject"][0])))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = FmriDataModule(str(tiny_prepared), batch_size=6)
    model = Probe(dm.subject_voxels)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=3, limit_val_batches=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert not torch.equal(torch.cat(model.seen[0]), torch.cat(model.seen[1]))  # set_epoch was called
    assert model.val_idx == {(0, 0), (1, 1), (2, 2)}


def test_workers(tiny_prepared):
    dm = FmriDataModule(str(tiny_prepared), batch_size=6, num_workers=2)
    ref = FmriDataModule(str(tiny_prepared), batch_size=6)
    a, b = _epoch(dm, 1), _epoch(ref, 1)
    for x, y in zip(a, b):
        assert torch.equal(x["stimulus"], y["stimulus"]) and torch.equal(x["brain"]["sub-02"], y["brain"]["sub-02"])


def test_mmap_rows_release_bounds_rss(tmp_path):
    psutil = pytest.importorskip("psutil")
    arr = (np.arange(4096 * 4096, dtype=np.float32) % 1000).reshape(4096, 4096)  # 64 MiB
    np.save(tmp_path / "x.npy", arr)
    proc = psutil.Process()
    r = MmapRows(tmp_path / "x.npy", release_every=4 << 20)
    base = proc.memory_info().rss
    peak = 0
    for a in range(0, 4096, 256):
        rows = np.arange(a, a + 256)
        np.testing.assert_array_equal(r.take(rows), arr[rows])
        peak = max(peak, proc.memory_info().rss - base)
    assert peak < 40 << 20  # without madvise the whole 64 MiB mapping would stay resident
    import pickle

    r2 = pickle.loads(pickle.dumps(r))  # workers reopen lazily
    np.testing.assert_array_equal(r2.take(np.array([1, 5])), arr[[1, 5]])
