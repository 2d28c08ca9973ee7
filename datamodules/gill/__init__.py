"""GILL's world data (issue 15): the LM's world text and GILL's captioning / retrieval / generation / decision data."""

from .datamodule import GillDataModule, WorldTextDataModule, gill_tokenizer, img_token_names
from .world import GillWorld

__all__ = ["GillDataModule", "GillWorld", "WorldTextDataModule", "gill_tokenizer", "img_token_names"]
