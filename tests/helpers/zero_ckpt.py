"""Write REAL DeepSpeed ZeRO-2/3 checkpoints on CPU, laid out as Lightning's DeepSpeedStrategy saves them.

Run as a subprocess (it initialises a gloo process group and DeepSpeed's global state):

    python -m tests.helpers.zero_ckpt SOURCE.ckpt OUT_DIR

Lightning's DeepSpeedStrategy refuses non-CUDA accelerators, so this does by hand what it does
on GPUs, with the same pieces: ``deepspeed.initialize`` on the LightningModule itself (Lightning
>= 2.1 does not wrap it, so keys are ``model.*``), the config of Lightning's ``DeepSpeedStrategy(stage=N)``
preset, one optimiser step (lr=0, so the weights stay those of SOURCE and exports can be compared
bit for bit), then ``engine.save_checkpoint(<dir>/last.ckpt, client_state=<the Lightning checkpoint
minus state_dict and optimizer_states>, tag="checkpoint")`` exactly as ``DeepSpeedStrategy.save_checkpoint``.

Writes OUT_DIR/stage{2,3}/last.ckpt/ (the FmriDecodingTask of SOURCE) and
OUT_DIR/tied{2,3}/last.ckpt/ (a tiny LightningModule whose two Linear layers share one weight).
DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu) is used, in fp32: bf16 ZeRO needs the GPU path.
The CPU shared-memory all-reduce op (a ~2 min C++ JIT build, used only to speed up multi-process
all-reduce) is skipped: with one process it would never be called.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(source: str, out_dir: str) -> None:
    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import deepspeed
    import deepspeed.comm.torch  # noqa: F401  (the attribute `deepspeed.comm.torch` is torch itself)
    import lightning as L
    import torch
    from lightning.pytorch.strategies import DeepSpeedStrategy
    from torch import nn

    from litbrain.tasks import FmriDecodingTask

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # see the module docstring
    deepspeed.init_distributed("gloo", auto_mpi_discovery=False)

    ckpt = torch.load(source, map_location="cpu", weights_only=True)
    client_state = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states")}

    class Tied(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.encoder = nn.Linear(6, 6)
            self.decoder = nn.Linear(6, 6)
            self.decoder.weight = self.encoder.weight  # tied

        def forward(self, x):
            return self.decoder(torch.relu(self.encoder(x)))

    def save(module: L.LightningModule, inputs, stage: int, path: Path, state: dict) -> None:
        config = dict(DeepSpeedStrategy(stage=stage).config)
        config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
        opt = torch.optim.AdamW(module.parameters(), lr=0.0)
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=opt, config=config, dist_init_required=False)
        out = engine(inputs)
        loss = sum(v.float().pow(2).mean() for v in out.values()) if isinstance(out, dict) else out.pow(2).mean()
        engine.backward(loss)
        engine.step()
        engine.save_checkpoint(str(path), client_state=state, tag="checkpoint")

    out = Path(out_dir)
    hp = ckpt["hyper_parameters"]
    for stage in (2, 3):
        task = FmriDecodingTask(**{k: v for k, v in hp.items() if not k.startswith("_")})
        task.configure_model()
        task.load_state_dict(ckpt["state_dict"])
        task.train()
        torch.manual_seed(0)
        brain = {s: torch.randn(4, int(n)) for s, n in hp["net"]["subjects"].items()}
        save(task, brain, stage, out / f"stage{stage}" / "last.ckpt", client_state)

        torch.manual_seed(stage)
        tied = Tied()
        (out / f"tied{stage}").mkdir(parents=True, exist_ok=True)
        # Before initialize: ZeRO-3 partitions the module's parameters in place.
        torch.save({k: v.detach().clone() for k, v in tied.state_dict().items()}, out / f"tied{stage}" / "expected.pt")
        save(tied, torch.randn(4, 6), stage, out / f"tied{stage}" / "last.ckpt",
             {"epoch": 0, "global_step": 1, "hyper_parameters": dict(tied.hparams)})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
