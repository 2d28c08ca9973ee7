"""The distillation comparison table (issue 17): teacher, KD / CE-only students, decoder-only students.

On held-out items of the fact-lookup world every model answers greedily; a row reports

* ``em``: exact match of the whole answer (words + <eos>), the bar's metric;
* ``token_acc``: accuracy of the answer tokens;
* ``teacher_agreement``: exact match with the teacher's own greedy answer;
* ``perplexity``: exp of the mean cross-entropy of the true answer tokens (teacher-forced);
* ``parameters``.

Oracle (reads the answer off the facts: EM 1.0) and majority-answer rows frame them. Several
checkpoints per row are seeds: mean and s.d., every seed's value kept.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from litbrain.errors import ConfigError
from litbrain.nn.distill import count_parameters
from litbrain.release import load_model
from litbrain.tasks.distill import answer_mask, greedy_or_sample, target_logits
from litbrain.utils.io import atomic_write_text

__all__ = ["evaluate_distill", "score_model"]


@torch.no_grad()
def score_model(model: Any, loader: Any, ids: dict[str, int], teacher_answers: list[torch.Tensor] | None = None
                ) -> tuple[dict[str, float], list[torch.Tensor]]:
    """Metrics of one model over ``loader``, and its greedy answers per batch."""
    model.eval()
    hits, tok_hits, tok_n, agree, nll, n = 0.0, 0.0, 0, 0.0, 0.0, 0
    answers = []
    for i, batch in enumerate(loader):
        tgt, mask = batch["target"], batch["target_mask"]
        pred = greedy_or_sample(model, batch["source"], batch["source_mask"], tgt.shape[1], ids["bos"], ids["pad"])
        answers.append(pred)
        hits += float(((pred == tgt) | ~mask).all(1).sum())
        tok_hits += float((pred == tgt)[mask].sum())
        tok_n += int(mask.sum())
        logits = target_logits(model, batch["source"], batch["source_mask"], tgt, mask, ids["bos"], ids["pad"])
        nll += float(F.cross_entropy(logits[mask].float(), tgt[mask], reduction="sum"))
        if teacher_answers is not None:
            t = teacher_answers[i]
            agree += float(((pred == t) | ~answer_mask(t, ids["eos"])).all(1).sum())
        n += tgt.shape[0]
    out = {"em": hits / n, "token_acc": tok_hits / tok_n, "perplexity": math.exp(nll / tok_n),
           "parameters": count_parameters(model)}
    if teacher_answers is not None:
        out["teacher_agreement"] = agree / n
    return out, answers


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def evaluate_distill(teacher: str, models: dict[str, list[str]], out_dir: str = "runs/distill_demo/results",
                     n_test: int = 512, n_facts: int = 8, n_things: int = 4, tokenizer_items: int = 2000, seed: int = 0,
                     batch_size: int = 64) -> dict[str, Any]:
    """Exact match, token accuracy, teacher agreement and perplexity of a teacher and its students.

    Args:
        teacher: the teacher's checkpoint or release (``causal_lm``).
        models: row label -> checkpoints or releases (several = seeds).
        out_dir: where metrics.json and table.md go.
        n_test / n_facts / n_things / tokenizer_items / seed: the held-out world (as the models were trained).
        batch_size: evaluation batch size.
    """
    from litbrain.datamodules.distill.datamodule import FactsDataModule
    from litbrain.datamodules.distill.synthetic import majority_answer, make_item

    if not models:
        raise ConfigError("models: empty; fix: give row label -> checkpoints, e.g. {'KD student': [run/best.ckpt]}")
    dm = FactsDataModule(n_train=1, n_val=1, n_test=n_test, n_facts=n_facts, n_things=n_things,
                         tokenizer_items=tokenizer_items,
                         seed=seed, batch_size=batch_size)
    tok = dm.tokenizer
    ids = {"pad": tok.pad_token_id, "bos": tok.bos_token_id, "eos": tok.eos_token_id}
    loader = list(dm.loader("test"))
    print(f"[distill evaluate] teacher {teacher}", file=sys.stderr, flush=True)
    t_model = load_model(teacher)
    if int(t_model.hf.config.vocab_size) != len(tok):
        raise ConfigError(f"teacher={teacher}: vocabulary of {t_model.hf.config.vocab_size} tokens, the world's tokenizer "
                          f"has {len(tok)}; fix: the same n_facts / tokenizer_items / seed as the training run")
    t_scores, t_answers = score_model(t_model, loader, ids)
    rows: list[dict[str, Any]] = [{"row": "teacher", "checkpoints": [teacher], **t_scores}]
    for label, paths in models.items():
        paths = [paths] if isinstance(paths, str) else list(paths)
        per_seed = []
        for path in paths:
            print(f"[distill evaluate] {label}: {path}", file=sys.stderr, flush=True)
            per_seed.append(score_model(load_model(path), loader, ids, t_answers)[0])
        row: dict[str, Any] = {"row": label, "checkpoints": paths, "seeds": per_seed}
        for key in per_seed[0]:
            row[key] = _summary([s[key] for s in per_seed])["mean"]
            row[f"{key}_sd"] = _summary([s[key] for s in per_seed])["sd"]
        rows.append(row)
    train = [make_item(seed, "train", i, n_facts, n_things) for i in range(tokenizer_items)]
    test_items = dm.dataset("test").items
    majority = majority_answer(train)
    rows.append({"row": "majority answer (baseline)", "em": statistics.fmean(it.answer == majority for it in test_items)})
    rows.append({"row": "oracle (reads the facts)", "em": 1.0})
    result = {"teacher": teacher, "n_test": n_test, "n_facts": n_facts, "n_things": n_things, "seed": seed, "rows": rows}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    lines = ["| row | EM | token acc | teacher agreement | perplexity | parameters |", "|---|---|---|---|---|---|"]
    for r in rows:
        def f(k: str, digits: int = 3) -> str:
            if k not in r:
                return ""
            sd = r.get(f"{k}_sd")
            return f"{r[k]:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd else "")
        params = f"{int(r['parameters']):,}" if "parameters" in r else ""
        lines.append(f"| {r['row']} | {f('em')} | {f('token_acc')} | {f('teacher_agreement')} | {f('perplexity', 2)} | "
                     f"{params} |")
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return result
