"""Upload a release folder to the Hugging Face Hub (after checking it, before any network call)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import ModelCard

from litbrain.errors import ReleaseError
from litbrain.release.source import CARD_FILE, MANIFEST_FILE, check_release

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = ["check_repo_id", "push_from_cli", "push_release"]


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if huggingface_hub's own validator accepts it, else one clear ``ReleaseError``."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ReleaseError(
            f"repo_id={repo_id!r} is not a valid Hugging Face repo id ({str(err).splitlines()[0]}); "
            f"fix: use 'user/name' or 'org/name' (letters, digits, '-', '_', '.'; at most 96 characters)"
        ) from None
    if "/" not in repo_id:
        raise ReleaseError(f"repo_id={repo_id!r} has no namespace; fix: use 'user/name' or 'org/name' so the target is explicit")
    return repo_id


def push_release(
    release: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    api: "HfApi | None" = None,
) -> str:
    """Upload a release folder to a Hugging Face model repo; returns the repo URL.

    Everything is checked before any network call: the repo id (huggingface_hub's validator),
    the folder (manifest hashes, config.json against model.safetensors) and the model card
    (README.md with a license). Then ``HfApi.create_repo(exist_ok=True)`` and one
    ``upload_folder`` commit of the release files. ``api`` lets a caller (or a test) supply the
    ``HfApi`` object to use.
    """
    check_repo_id(repo_id)
    folder = Path(release)
    config = check_release(folder)
    card_file = folder / CARD_FILE
    if not card_file.is_file():
        raise ReleaseError(f"{folder}: release folder has no README.md model card; fix: re-run `litbrain export`")
    card = ModelCard.load(card_file)
    if not getattr(card.data, "license", None):
        raise ReleaseError(f"{card_file}: model card names no license; fix: re-run `litbrain export --license ...`")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    files = [CARD_FILE, MANIFEST_FILE, *json.loads((folder / MANIFEST_FILE).read_text())["files"]]
    if (folder / "metrics.json").is_file():
        files.append("metrics.json")
    message = commit_message or f"litbrain release: {config.card().title}"
    try:
        url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", token=token, revision=revision,
                          commit_message=message, allow_patterns=sorted(set(files)))
    except Exception as err:  # offline mode, no network, bad token, no write access: one line, not a traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ReleaseError(
            f"push of {folder} to {repo_id} failed ({type(err).__name__}: {first[:200]}); fix: check the network "
            f"(HF_HUB_OFFLINE must be unset), the token (--token or `hf auth login`) and write access to {repo_id}"
        ) from None
    return str(url)


def push_from_cli(
    release: str,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str:
    """Upload a release folder (from ``litbrain export``) to the Hugging Face Hub.

    Args:
        release: the release folder (model.safetensors, config.json, README.md model card, manifest.json).
        repo_id: the target model repo, ``user/name`` or ``org/name``; created if missing.
        private: create the repo as private (an existing repo keeps its visibility).
        token: a Hub write token (default: HF_TOKEN or the one saved by `hf auth login`).
        commit_message: the commit message (default: names the model).
        revision: the branch to push to (default: main).
    """
    return push_release(release, repo_id, private=private, token=token, commit_message=commit_message, revision=revision)
