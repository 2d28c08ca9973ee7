"""A train DataLoader that Lightning can resume mid-epoch.

Lightning (2.x) saves ``loader.state_dict()`` in the fit loop's checkpoint state and calls
``loader.load_state_dict(...)`` when it restarts mid-epoch; without it, a resumed epoch starts
its batch stream from the beginning again and trains on the wrong batches. This loader records
(epoch, batches handed out this epoch) and, after a restore, has its sampler skip that many
batches -- index arrays only, no data is read for the skipped batches.

The sampler must offer ``epoch`` (set by ``set_epoch``) and ``skip_next_iteration(n)``.
Counting happens where Lightning receives the batches (after any worker prefetching), and
Lightning does not prefetch from loaders that have a length, so the count is exactly the
number of batches the training loop consumed.
"""

from __future__ import annotations

from typing import Any, Iterator

from torch.utils.data import DataLoader


class ResumableDataLoader(DataLoader):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches": int(self._yielded)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing runs until the first batch is requested, i.e. after Lightning's
        # set_epoch for this epoch, so the restored position is matched against the right epoch.
        skip, resume, self._resume = 0, self._resume, None
        if resume is not None and resume["epoch"] == int(getattr(self.sampler, "epoch", 0)):
            if 0 < resume["batches"] < len(self):
                skip = resume["batches"]
        self.sampler.skip_next_iteration(skip)
        self._yielded = skip
        for batch in super().__iter__():
            self._yielded += 1
            yield batch
