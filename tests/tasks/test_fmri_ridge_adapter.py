"""net.adapter: ridge -- closed-form ridge adapters (penalty chosen on val), frozen, with a shared residual
stage trained on out-of-fold ridge predictions; the untrained decoder is the ridge decoder."""

import numpy as np
import torch
from lightning.pytorch import Trainer

from litbrain.datamodules import FmriDataModule
from litbrain.evaluation.baselines import fit_ridge
from litbrain.metrics import retrieval_score, similarity_matrix
from litbrain.nn import BrainDecoder
from litbrain.nn.fmri_decoder import BrainDecoderConfig
from litbrain.nn.ridge import fit_ridge_folds
from litbrain.release import load_model
from litbrain.tasks import FmriDecodingTask

ALPHAS = [1e-2, 1.0, 100.0]


def test_fold_maps_never_see_their_stimulus_and_equal_ridge_on_the_complement():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 7, generator=g), torch.randn(60, 3, generator=g)
    groups = np.repeat(np.arange(20), 3)  # 3 repeats of each of 20 stimuli
    maps, fold = fit_ridge_folds(x, y, groups, 0.5, n_folds=4)
    assert len(maps) == 4 and sorted(set(fold.tolist())) == [0, 1, 2, 3]
    for s in range(20):
        assert len(set(fold[groups == s].tolist())) == 1  # the repeats of a stimulus share a fold
    for k, m in enumerate(maps):
        ref = fit_ridge(x[fold != k], y[fold != k], [0.5])
        torch.testing.assert_close(m.weight, ref.weight)


def _task_and_dm(tiny_prepared, folds=3):
    dm = FmriDataModule(str(tiny_prepared), batch_size=30)
    net = BrainDecoderConfig(width=16, n_blocks=1, adapter="ridge", projector=True)
    task = FmriDecodingTask(net=net, ridge_alphas=ALPHAS, ridge_folds=folds, retrieval_pool=30)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2, limit_val_batches=0)
    return task, dm, trainer


def test_the_untrained_ridge_decoder_is_the_evaluations_ridge_baseline_and_its_adapters_stay_frozen(tiny_prepared):
    task, dm, trainer = _task_and_dm(tiny_prepared)
    trainer.fit(task, datamodule=dm)  # fit_ridge_adapters runs at fit start, then 2 optimiser steps
    targets = torch.from_numpy(np.load(tiny_prepared / "image_embedding.npy")).float()
    fresh = BrainDecoder(task.net)
    fresh.adapter.load_state_dict(task.model.adapter.state_dict())  # ridge adapters, untrained shared stage
    for s, tr, va, te in zip(dm.subjects, dm._get_splits("train"), dm._get_splits("val"), dm._get_splits("test")):
        x_tr, x_va, x_te = (torch.from_numpy(sp.read(np.arange(sp.n))) for sp in (tr, va, te))
        ridge = fit_ridge(x_tr, targets[tr.stimulus], ALPHAS, x_va, targets[va.stimulus],
                          lambda p, t: retrieval_score(p, t, 30, 5, 0))
        with torch.no_grad():
            out = fresh({s: x_te})["image_projection"]
        # same penalty, same map up to a positive scale: identical cosine similarities to every target
        torch.testing.assert_close(similarity_matrix(out, targets[te.stimulus]),
                                   similarity_matrix(ridge.predict(x_te).float(), targets[te.stimulus]),
                                   atol=1e-4, rtol=0)
        assert not any("_oof" in k for k in task.state_dict())  # fold maps are training state only
        lin = task.model.adapter.maps[s]
        assert not lin.weight.requires_grad
        torch.testing.assert_close(lin.weight, fresh.adapter.maps[s].weight)  # training did not move it


def test_training_rows_go_through_the_fold_map_that_never_saw_their_stimulus(tiny_prepared, tmp_path):
    task, dm, trainer = _task_and_dm(tiny_prepared, folds=3)
    trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "ridge.ckpt")  # a ridge-adapter checkpoint loads like any decoder's
    loaded = load_model(str(tmp_path / "ridge.ckpt"))
    batch = next(iter(dm.train_dataloader()))
    oof, start = task._oof, 0
    for s, x in batch["brain"].items():
        rows = batch["stimulus"][start:start + x.shape[0]]
        start += x.shape[0]
        folds = task._fold_of[s][rows]
        assert (folds >= 0).all()
        oof.rows = {s: folds}
        per_row = torch.stack([x[i] @ oof.weights[s][folds[i]] + oof.biases[s][folds[i]] for i in range(x.shape[0])])
        assert not torch.allclose(per_row, task.model.adapter(x, s), atol=1e-3)  # out-of-fold, not in-sample
        task.model.eval()
        with torch.no_grad():
            torch.testing.assert_close(oof({s: x})["image_projection"], task.model.decode(per_row)["image_projection"])
            torch.testing.assert_close(loaded({s: x})["image_projection"], task.model({s: x})["image_projection"])
