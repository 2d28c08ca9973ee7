"""Model cards: one template, filled by the model's own config (:meth:`ModelConfig.card`)."""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from litbrain.nn.registry import ModelConfig

__all__ = ["metrics_table", "model_card"]


def metrics_table(metrics: dict[str, Any] | None) -> str:
    """A Markdown table of an evaluation's ``rows`` (or of its scalar figures)."""
    if not metrics:
        return "_No evaluation was attached to this release._"
    rows = metrics.get("rows") or []
    if rows:
        cols = list(rows[0].keys())
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
        return "\n".join(lines)
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines)


def model_card(config: ModelConfig, metrics: dict[str, Any] | None, training_config: str | None,
               license: str) -> ModelCard:
    """The README.md of a release: what the model is, how to load and call it, its figures, its config."""
    about = config.card()
    data = ModelCardData(library_name="litbrain", license=license, tags=[*about.tags, "litbrain"])
    return ModelCard(f"""---
{data.to_yaml()}
---

# {about.title}

{about.summary}

## Intended use
{about.intended_use}

## Use
```python
from litbrain.release import load_release
model = load_release("path/or/repo-id")   # {config.model_type}, eval mode; nothing is unpickled
{about.usage}
```

## Evaluation
{metrics_table(metrics)}

## Training config
```yaml
{(training_config or "(not recorded)").strip()}
```

## License
{license}
""")
