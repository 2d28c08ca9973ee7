"""The distillation table and the latency benchmark, on tiny models (figures at demo size: make distill-demo)."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from litbrain.datamodules.distill.datamodule import FactsDataModule
from litbrain.nn.distill import CausalLmConfig, Seq2SeqStudentConfig, tiny_gemma2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from litbrain.tasks.distill import CausalLmTask, DistillationTask

    d = tmp_path_factory.mktemp("distill_eval")
    world = dict(n_facts=2, n_things=1, tokenizer_items=100)
    dm = FactsDataModule(n_train=16, n_val=8, n_test=8, batch_size=8, **world)
    torch.manual_seed(0)
    lm = {k: v for k, v in tiny_gemma2(hidden_size=16, layers=2, intermediate_size=32, head_dim=8).items()
          if k != "vocab_size"}
    out = {}
    for name, task in (("teacher", CausalLmTask(net=CausalLmConfig(lm=lm))),):
        trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(task, dm)
        trainer.save_checkpoint(d / f"{name}.ckpt")
        out[name] = str(d / f"{name}.ckpt")
    student = DistillationTask(net=Seq2SeqStudentConfig(hidden_size=16, intermediate_size=32, head_dim=8),
                               teacher=out["teacher"])
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(student, dm)
    trainer.save_checkpoint(d / "student.ckpt")
    out["student"] = str(d / "student.ckpt")
    return out, world, d


def test_table_rows_and_metrics(runs):
    from litbrain.evaluation.distill import evaluate_distill

    paths, world, d = runs
    result = evaluate_distill(paths["teacher"], {"KD student": [paths["student"], paths["student"]]},
                              str(d / "res"), n_test=8, batch_size=4, **world)
    rows = {r["row"]: r for r in result["rows"]}
    assert set(rows) == {"teacher", "KD student", "majority answer (baseline)", "oracle (reads the facts)"}
    kd = rows["KD student"]
    assert len(kd["seeds"]) == 2 and kd["em_sd"] == 0.0  # same checkpoint twice: same figures
    for key in ("em", "token_acc", "teacher_agreement"):
        assert 0.0 <= kd[key] <= 1.0
    assert kd["perplexity"] > 1.0 and rows["teacher"]["perplexity"] > 1.0
    assert json.loads((d / "res" / "metrics.json").read_text())["rows"][0]["row"] == "teacher"
    assert "| KD student |" in (d / "res" / "table.md").read_text()


def test_teacher_agrees_with_itself_and_em_is_exact_match():
    """score_model against hand-counted answers: a model that copies the target is right everywhere."""
    from litbrain.evaluation.distill import score_model
    from litbrain.nn.distill import Seq2SeqStudent

    dm = FactsDataModule(n_train=1, n_val=1, n_test=4, n_facts=2, n_things=1, tokenizer_items=50, batch_size=4)
    model = Seq2SeqStudent(Seq2SeqStudentConfig(vocab_size=dm.vocab_size, hidden_size=16, intermediate_size=32,
                                                head_dim=8))
    loader = list(dm.loader("test"))
    ids = {"pad": 0, "bos": 1, "eos": 2}
    scores, answers = score_model(model, loader, ids)
    again, _ = score_model(model, loader, ids, answers)
    assert again["teacher_agreement"] == 1.0  # its own answers
    tgt = loader[0]["target"]
    assert scores["em"] == float((answers[0] == tgt).all(1).float().mean())


def test_latency_bench_runs_and_reports_the_bar(tmp_path):
    from litbrain.benchmarks.distill import bench_distill

    r = bench_distill(student={"hidden_size": 16, "intermediate_size": 32, "head_dim": 8},
                      teacher=tiny_gemma2(hidden_size=16, layers=2, intermediate_size=32, head_dim=8),
                      input_lengths=[16, 512], batch_sizes=[1], output_tokens=3, rounds=1, out_json=str(tmp_path / "b.json"))
    assert set(r["parameters"]) == {"encoder-decoder", "decoder-only", "teacher"}
    p = r["parameters"]
    assert abs(p["encoder-decoder"] - p["decoder-only"]) / p["encoder-decoder"] < 0.01
    assert [(s["input"], s["batch"]) for s in r["settings"]] == [(16, 1), (512, 1)]
    assert all(v is None or v > 0 for s in r["settings"] for v in s["decode_tok_s"].values())
    assert all(s["first_token_s"]["decoder-only"] > 0 for s in r["settings"])
    assert "first_token_ratio_at_512" in r["bars"]
    assert all(0 < v < 2 for s in r["settings"] for v in s["first_token_of_fp32_peak"].values())  # issue 20
    assert json.loads((tmp_path / "b.json").read_text())["parameters"] == p
