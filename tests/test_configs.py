"""Every YAML in configs/ parses with the parser of the command that reads it, and its classes resolve.

Each config names its command in a comment (``litbrain <verb> --config configs/...``), as the
README does. The test runs that command's parser on the file, without training or reading data:
training configs through LightningCLI's ``--print_config`` (then every ``class_path`` is imported
and the task is instantiated from its ``init_args``), function-verb configs through the verb's
jsonargparse signature (unknown keys and wrong types fail). The verb table, the Makefile and every
``litbrain`` command of the README must agree: each command resolves to a verb, its config exists.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported outside capsys: it binds logging handlers to sys.stderr)
import pytest
import yaml

from litbrain.cli import main, verbs

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml"))

try:  # Imported here, not under capsys: DeepSpeed binds a logging handler to the sys.stdout it sees at
    import deepspeed  # noqa: F401  import time, and a test's capsys stream is closed after that test.
except ImportError:
    pass

_COMMAND = re.compile(r"litbrain ((?:[a-z-]+ )+)(.*)")


def commands(text: str) -> list[list[str]]:
    """``litbrain ...`` command lines in a text (backticks and shell punctuation cut off), as argv lists."""
    out = []
    for line in text.splitlines():
        for part in re.split(r"[`|]", line):
            m = re.search(r"(?:^|\s|\$\(BIN\)/)litbrain (\S.*)", part)
            if not m:
                continue
            tail = m.group(1).split("#")[0].strip().rstrip("\\").strip()
            try:
                argv = shlex.split(tail)
            except ValueError:
                continue
            if argv and not argv[0].startswith("-") and re.fullmatch(r"[a-z][a-z-]*", argv[0]):
                out.append(argv)
    return out


def config_args(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]


def own_command(path: Path) -> list[str]:
    for argv in commands(path.read_text()):
        if str(path) in config_args(argv):
            return argv
    raise AssertionError(f"{path}: no comment naming its command (`litbrain <verb> --config {path}`)")


@pytest.mark.parametrize("path", CONFIGS, ids=str)
def test_every_config_parses_with_its_commands_parser(path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = own_command(path)
    found = verbs.resolve(argv)
    assert found is not None, f"{path}: its command {argv[:2]} is no litbrain verb"
    name, verb, rest = found
    files = [str(REPO / f) for f in config_args(rest)]
    if verb.target == "lightning":
        with pytest.raises(SystemExit) as exc:
            main([name, *[a for f in files for a in ("--config", f)], "--print_config"])
        assert exc.value.code in (0, None), capsys.readouterr().err
        out = "\n".join(ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("[20"))
        config = yaml.safe_load(out)
        for key in ("model", "data"):
            module, _, cls = config[key]["class_path"].rpartition(".")
            assert hasattr(importlib.import_module(module), cls), config[key]["class_path"]
        module, _, cls = config["model"]["class_path"].rpartition(".")
        task = getattr(importlib.import_module(module), cls)(**config["model"].get("init_args", {}))
        assert task.net.model_type  # the task's model config came through
    else:
        from jsonargparse import ArgumentParser

        module, _, fn = verb.target.partition(":")
        parser = ArgumentParser(exit_on_error=False)
        parser.add_function_arguments(getattr(importlib.import_module(module), fn))
        parser.parse_path(str(REPO / path))


def _documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in ("README.md", "Makefile"):
        for argv in commands((REPO / doc).read_text()):
            found.append((doc, argv))
    return found


def test_every_readme_and_makefile_command_is_a_verb_with_existing_configs():
    docs = _documented_commands()
    assert len(docs) > 20
    for doc, argv in docs:
        found = verbs.resolve(argv)
        assert found is not None, f"{doc}: `litbrain {' '.join(argv)}` names no verb"
        for f in config_args(found[2]):
            assert (REPO / f).is_file(), f"{doc}: `litbrain {' '.join(argv)}`: no {f}"


def test_the_verb_table_follows_one_rule_and_every_target_exists():
    for name, verb in verbs.SHARED.items():
        if verb.target != "lightning":
            module, _, fn = verb.target.partition(":")
            assert callable(getattr(importlib.import_module(module), fn)), name
    for family, table in verbs.FAMILIES.items():
        assert family not in verbs.SHARED and set(table).isdisjoint(verbs.SHARED)
        for name, verb in table.items():
            module, _, fn = verb.target.partition(":")
            assert callable(getattr(importlib.import_module(module), fn)), f"{family} {name}"
    # every family's data verbs are called the same: synthesize, prepare, evaluate, bench, or a variant
    # of one of them for another format or world, named <verb>-<what> (fmri prepare-nsd, vlm bench-vit)
    base = {"synthesize", "prepare", "evaluate", "bench"}
    for family, table in verbs.FAMILIES.items():
        for name in table:
            assert name in base or (name.split("-", 1)[0] in base and re.fullmatch(r"[a-z]+-[a-z0-9]+", name)), \
                f"{family} {name}: not <verb> or <verb>-<what> for a verb of {sorted(base)}"
    for alias, (family, name) in verbs.ALIASES.items():
        assert verbs.resolve([alias])[1] is verbs.FAMILIES[family][name]
    # the Makefile's benchmark and demo targets go through the verb table
    make = (REPO / "Makefile").read_text()
    for family, table in verbs.FAMILIES.items():
        if "bench" in table:
            assert f"litbrain {family} bench " in make, family


def test_help_costs_no_torch_import():
    import subprocess
    import sys

    code = "import sys; from litbrain.cli import main; main(['--help']); assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
