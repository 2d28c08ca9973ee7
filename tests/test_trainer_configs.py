"""Every trainer config composes with a task config; GPU/DeepSpeed ones fail clearly without CUDA."""

import lightning.pytorch  # noqa: F401  (imported outside capsys: it binds logging handlers to sys.stderr)
import pytest
import torch
import yaml

from litbrain.cli import main
from tests.helpers.fit import DEMO_CONFIG, REPO, fit_args

try:  # Imported here, not under capsys: DeepSpeed binds a logging handler to the sys.stdout it sees at
    import deepspeed  # noqa: F401  import time, and a test's capsys stream is closed after that test.
except ImportError:
    pass

TRAINER_CONFIGS = sorted((REPO / "configs" / "trainer").glob("*.yaml"))
DEEPSPEED = [p for p in TRAINER_CONFIGS if p.stem.startswith("deepspeed")]
GPU_ONLY = [p for p in TRAINER_CONFIGS if yaml.safe_load(p.read_text())["trainer"].get("accelerator") == "gpu"]


def _strategy(value):
    return value["class_path"] if isinstance(value, dict) else value


def test_there_are_the_expected_trainer_configs():
    names = {p.stem for p in TRAINER_CONFIGS}
    assert {"cpu", "gpu", "ddp", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload"} <= names


@pytest.mark.parametrize("trainer_config", TRAINER_CONFIGS, ids=lambda p: p.stem)
def test_every_trainer_config_composes_with_the_demo_at_parse_time(trainer_config, capsys):
    """`--print_config` parses demo.yaml + the trainer file (later overrides earlier) and exits
    before anything is instantiated, so GPU/DeepSpeed configs are checked on a CPU machine too."""
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", DEMO_CONFIG, "--config", str(trainer_config), "--print_config"])
    assert exc.value.code in (0, None)
    printed = "\n".join(ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("[20"))  # DeepSpeed's log
    config = yaml.safe_load(printed)
    wanted = yaml.safe_load(trainer_config.read_text())["trainer"]
    for key, value in wanted.items():
        got = config["trainer"][key]
        if key == "strategy":
            assert _strategy(got) == _strategy(value)
            if isinstance(value, dict):
                for k, v in value.get("init_args", {}).items():
                    assert got["init_args"][k] == v, k
        else:
            assert got == value, key
    assert config["model"]["class_path"] == "litbrain.tasks.FmriDecodingTask"  # the task part survived
    assert config["trainer"]["max_epochs"] == 45


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("trainer_config", DEEPSPEED + [p for p in GPU_ONLY if p not in DEEPSPEED], ids=lambda p: p.stem)
def test_gpu_or_deepspeed_config_without_cuda_fails_before_training(trainer_config, tiny_prepared, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(fit_args(tiny_prepared, tmp_path, "--config", str(trainer_config)))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    key = "trainer.strategy=" if trainer_config in DEEPSPEED else "trainer.accelerator=gpu"
    assert key in line and "fix:" in line and "configs/trainer/cpu.yaml" in line
    assert str(trainer_config) in line  # names the file the setting came from
    assert "Traceback" not in line
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "logs").exists()
