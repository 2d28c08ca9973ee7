"""The distillation tasks on a tiny fact-lookup world: a frozen teacher, KD / on-policy / teacher targets,
the decoder-only twin, release in litbrain's and Hugging Face's formats."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from litbrain.datamodules.distill.datamodule import FactsDataModule
from litbrain.nn.distill import CausalLmConfig, Seq2SeqStudentConfig, tiny_gemma2
from litbrain.tasks.distill import CausalLmTask, DecoderOnlyDistillationTask, DistillationTask, greedy_or_sample


def _trainer(steps: int) -> L.Trainer:
    return L.Trainer(max_epochs=1, limit_train_batches=steps, accelerator="cpu", enable_progress_bar=False, logger=False,
                     enable_checkpointing=False, limit_val_batches=1, num_sanity_val_steps=0, enable_model_summary=False)


@pytest.fixture(scope="module")
def dm():
    return FactsDataModule(n_train=48, n_val=8, n_test=8, n_facts=3, tokenizer_items=200, batch_size=8)


@pytest.fixture(scope="module")
def teacher_release(dm, tmp_path_factory):
    from litbrain.release import save_release

    torch.manual_seed(0)
    lm = {k: v for k, v in tiny_gemma2(hidden_size=16, layers=3, intermediate_size=32, head_dim=8).items()
          if k != "vocab_size"}
    task = CausalLmTask(net=CausalLmConfig(lm=lm))
    _trainer(3).fit(task, dm)
    return save_release(task.model, tmp_path_factory.mktemp("teacher") / "release", files=task.release_files())


def _student(**kw):
    return Seq2SeqStudentConfig(hidden_size=16, intermediate_size=32, encoder_layers=2, decoder_layers=1, head_dim=8,
                                **kw)


def test_kd_fit_keeps_the_teacher_frozen_and_out_of_the_checkpoint(dm, teacher_release, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from litbrain.release import load_release, save_release
    from litbrain.release.hf_native import save_hf_native

    torch.manual_seed(0)
    task = DistillationTask(net=_student(), teacher=str(teacher_release), alpha=0.9, beta=0.5)
    trainer = _trainer(3)
    trainer.fit(task, dm)
    teacher = task.teacher
    before = {k: v.clone() for k, v in load_release(teacher_release).state_dict().items()}
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert trainer.callback_metrics["train/kd"] > 0
    assert not any(k.startswith(("teacher", "_teacher")) for k in task.state_dict())
    trainer.save_checkpoint(tmp_path / "s.ckpt")
    assert not any("teacher" in k for k in torch.load(tmp_path / "s.ckpt", weights_only=False)["state_dict"])
    # litbrain release and Hugging Face's own format give the same logits
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        want = task.model.eval()(batch["source"], batch["decoder_input"], batch["source_mask"])
    back = load_release(save_release(task.model, tmp_path / "rel", files=task.release_files()))
    hf_dir = save_hf_native(task.model, tmp_path / "hf", task.release_files())
    hf = AutoModelForSeq2SeqLM.from_pretrained(hf_dir).eval()
    assert AutoTokenizer.from_pretrained(hf_dir).get_vocab() == dm.tokenizer.get_vocab()
    with torch.no_grad():
        torch.testing.assert_close(back(batch["source"], batch["decoder_input"], batch["source_mask"]), want)
        got = hf(input_ids=batch["source"], attention_mask=batch["source_mask"], decoder_input_ids=batch["decoder_input"])
    torch.testing.assert_close(got.logits, want)


def test_on_policy_lambda_one_takes_every_target_from_the_student(dm, teacher_release):
    torch.manual_seed(0)
    task = DistillationTask(net=_student(), teacher=str(teacher_release), on_policy_lambda=1.0, sample_temperature=0.9,
                            seed=3)
    trainer = _trainer(1)
    trainer.fit(task, dm)
    ids = task._tok_ids
    task.model.eval()
    for i, batch in zip(range(4), dm.train_dataloader()):
        state = task._sampler.get_state()
        target, mask, where = task.choose_targets(batch)
        assert where == "student"
        again = greedy_or_sample(task.model, batch["source"], batch["source_mask"], target.shape[1], ids["bos"],
                                 ids["pad"], 0.9, torch.Generator().set_state(state))
        assert torch.equal(target, again)  # exactly the student's own samples ...
        assert not torch.equal(target, batch["target"])  # ... not the data's answers
    assert task.last_target_source == "student"


def test_teacher_targets_are_the_teachers_greedy_answers(dm, teacher_release):
    task = DistillationTask(net=_student(), teacher=str(teacher_release), targets="teacher")
    _trainer(1).fit(task, dm)
    batch = next(iter(dm.train_dataloader()))
    target, _, where = task.choose_targets(batch)
    ids = task._tok_ids
    assert where == "teacher"
    assert torch.equal(target, greedy_or_sample(task.teacher, batch["source"], batch["source_mask"], target.shape[1],
                                                ids["bos"], ids["pad"]))


def test_decoder_only_student_with_kd_and_ce_only_student(dm, teacher_release):
    lm = {k: v for k, v in tiny_gemma2(hidden_size=16, layers=3, intermediate_size=40, head_dim=8).items()
          if k != "vocab_size"}
    task = DecoderOnlyDistillationTask(net=CausalLmConfig(lm=lm), teacher=str(teacher_release), beta=1.0)
    trainer = _trainer(2)
    trainer.fit(task, dm)
    assert trainer.callback_metrics["train/kd"] > 0 and "val/teacher_agreement" in trainer.callback_metrics
    ce = DistillationTask(net=_student(), teacher=None, alpha=0.0)
    trainer = _trainer(2)
    trainer.fit(ce, dm)
    assert float(trainer.callback_metrics["train/kd"]) == 0.0


def test_greedy_decoding_of_a_decoder_only_model_matches_generate(dm, teacher_release):
    """The right-padded greedy loop equals Hugging Face's generate row by row (no padding there)."""
    from litbrain.release import load_release

    teacher = load_release(teacher_release)
    batch = next(iter(dm.val_dataloader()))
    ours = greedy_or_sample(teacher, batch["source"], batch["source_mask"], 3, 1, 0)
    for b in range(3):
        src = batch["source"][b, : int(batch["source_mask"][b].sum())][None]
        ref = teacher.hf.generate(src, max_new_tokens=3, do_sample=False)[0, src.shape[1]:]  # stops after <eos>
        assert len(ref) >= 1 and torch.equal(ours[b, : len(ref)], ref)
