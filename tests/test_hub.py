"""Release folders, the Hugging Face push and bad input at the release/checkpoint boundary.

The push is tested offline by SUBSTITUTING huggingface_hub's API object: ``push_release`` takes
``api``, and ``RecordingApi`` (an ``HfApi`` subclass) records ``create_repo`` and copies what
``upload_folder`` would upload into a local folder instead of sending it. No endpoint is contacted.
"""

import json
import os
import shutil
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported outside capsys: it binds logging handlers to sys.stderr)
import pytest
import torch
from huggingface_hub import HfApi, RepoUrl

from litbrain.cli import main
from litbrain.errors import ReleaseError
from litbrain.release import export_release, load_release, push_release
from litbrain.utils.checkpoint import read_checkpoint as load_checkpoint


class RecordingApi(HfApi):
    """An HfApi whose network calls are replaced by a record and a local copy of the upload."""

    def __init__(self, upload_to: Path) -> None:
        super().__init__(endpoint="https://hub.invalid")
        self.upload_to, self.calls = upload_to, []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return RepoUrl(f"https://hub.invalid/{repo_id}", endpoint="https://hub.invalid")

    def upload_folder(self, *, repo_id, folder_path, **kw):
        import fnmatch

        self.calls.append(("upload_folder", repo_id, kw))
        for p in Path(folder_path).iterdir():
            if any(fnmatch.fnmatch(p.name, pat) for pat in kw.get("allow_patterns") or ["*"]):
                self.upload_to.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, self.upload_to / p.name)
        return None


@pytest.fixture(scope="module")
def release(tiny_checkpoint, tmp_path_factory) -> Path:
    metrics = {"split": "test", "rows": [{"method": "decoder", "brain_to_image": 0.5}]}
    return export_release(tiny_checkpoint, tmp_path_factory.mktemp("rel") / "release", metrics=metrics,
                          training_config="model:\n  width: 64\n", license="cc-by-4.0")


def _copy(release: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(release, tmp_path / "release"))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_push_uploads_the_release_through_the_api_object(release, tmp_path):
    """Offline: a recording HfApi stands in for the Hub (see the module docstring)."""
    api = RecordingApi(tmp_path / "uploaded")
    url = push_release(release, "someone/litbrain-tiny", private=True, commit_message="first release", api=api)
    assert url == "https://hub.invalid/someone/litbrain-tiny"
    (create, repo, create_kw), (upload, repo2, upload_kw) = api.calls
    assert (create, repo, upload, repo2) == ("create_repo", "someone/litbrain-tiny", "upload_folder", "someone/litbrain-tiny")
    assert create_kw["private"] is True and create_kw["exist_ok"] is True and create_kw["repo_type"] == "model"
    assert upload_kw["commit_message"] == "first release" and upload_kw["repo_type"] == "model"
    assert sorted(p.name for p in (tmp_path / "uploaded").iterdir()) == ["README.md", "config.json", "manifest.json",
                                                                        "metrics.json", "model.safetensors"]
    card = (tmp_path / "uploaded" / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "## License" in card
    assert "| decoder | 0.500 |" in card and "## Intended use" in card and "width: 64" in card
    assert json.loads((tmp_path / "uploaded" / "config.json").read_text())["subjects"]
    assert load_release(tmp_path / "uploaded").subjects == load_release(release).subjects


def test_push_default_commit_message_names_the_model(release, tmp_path):
    api = RecordingApi(tmp_path / "up")
    push_release(release, "org/name", api=api)
    assert "fMRI decoder" in api.calls[1][2]["commit_message"] and api.calls[0][2]["private"] is False


@pytest.mark.parametrize("repo_id", ["bad id!", "a/b/c", "no-namespace", "-x/y"])
def test_invalid_repo_id_is_refused_before_any_network_call(repo_id, release, tmp_path, capsys):
    api = RecordingApi(tmp_path / "up")
    with pytest.raises(ReleaseError, match="repo id|namespace"):
        push_release(release, repo_id, api=api)
    assert api.calls == []
    with pytest.raises(SystemExit) as exc:
        main(["push", "--release", str(release), f"--repo_id={repo_id}"])
    line = _one_error_line(capsys)
    assert exc.value.code == 2 and repr(repo_id) in line and "fix:" in line


def test_push_offline_with_the_real_api_is_one_clear_error(release, capsys):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest: nothing leaves this machine
    with pytest.raises(SystemExit) as exc:
        main(["push", "--release", str(release), "--repo_id", "someone/x"])
    line = _one_error_line(capsys)
    assert exc.value.code == 2 and "HF_HUB_OFFLINE" in line and "fix:" in line


def test_load_release_by_repo_id_reads_the_hub_cache(release, tmp_path):
    """A repo id goes through huggingface_hub (snapshot_download); offline it is served from a
    cache laid out by hand as huggingface_hub writes it (refs/main -> snapshots/<commit>/)."""
    repo = tmp_path / "cache" / "models--someone--litbrain-tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(release, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = load_release("someone/litbrain-tiny", cache_dir=tmp_path / "cache")
    local = load_release(release)
    for k, v in local.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    with pytest.raises(ReleaseError, match="could not be fetched.*fix:"):
        load_release("someone/not-cached", cache_dir=tmp_path / "cache")
    with pytest.raises(ReleaseError, match="no such file or folder.*fix:"):
        load_release(str(tmp_path / "no" / "such" / "folder"))


# ---------------------------------------------------------------- bad input, one clear error each
def test_truncated_checkpoint_is_one_clear_error(tiny_checkpoint, tmp_path, capsys):
    broken = tmp_path / "truncated.ckpt"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(SystemExit) as exc:
        main(["export", "--checkpoint", str(broken), "--out", str(tmp_path / "rel")])
    line = _one_error_line(capsys)
    assert exc.value.code == 2 and str(broken) in line and "fix:" in line
    assert not (tmp_path / "rel").exists()


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_code_is_refused_and_the_code_never_runs(tiny_checkpoint, tiny_prepared, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["hyper_parameters"] = {**ckpt["hyper_parameters"], "payload": _RunsCode(marker)}
    torch.save(ckpt, evil)
    with pytest.raises(ReleaseError, match="pickled objects are refused"):
        load_checkpoint(evil)
    with pytest.raises(SystemExit) as exc:
        main(["export", "--checkpoint", str(evil), "--out", str(tmp_path / "rel")])
    assert exc.value.code == 2 and str(evil) in _one_error_line(capsys)
    with pytest.raises(SystemExit) as exc:
        main(["fmri", "evaluate", "--data_dir", str(tiny_prepared), "--checkpoint", str(evil), "--out_dir", str(tmp_path / "res")])
    assert exc.value.code == 2 and str(evil) in _one_error_line(capsys)
    assert not marker.exists()


def test_release_without_config_json_is_one_clear_error(release, tiny_prepared, tmp_path, capsys):
    folder = _copy(release, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(ReleaseError, match="no config.json.*fix:"):
        load_release(folder)
    with pytest.raises(SystemExit) as exc:
        main(["fmri", "evaluate", "--data_dir", str(tiny_prepared), "--checkpoint", str(folder), "--out_dir", str(tmp_path / "res")])
    line = _one_error_line(capsys)
    assert exc.value.code == 2 and str(folder) in line and "config.json" in line and "fix:" in line


def _rehash(folder: Path, name: str) -> None:
    """Record a file's new sha256 in the manifest, as a consistent (but wrong) release would."""
    from litbrain.release.source import file_sha256

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": file_sha256(folder / name), "size": (folder / name).stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_release_whose_weights_do_not_match_config_json_is_one_clear_error(release, tiny_prepared, tmp_path, capsys):
    folder = _copy(release, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["subjects"]["sub-01"] += 7
    (folder / "config.json").write_text(json.dumps(cfg))
    _rehash(folder, "config.json")
    with pytest.raises(ReleaseError) as err:
        load_release(folder)
    msg = str(err.value)
    assert str(folder) in msg and "adapter.maps.sub-01" in msg and "shape" in msg and "fix:" in msg
    with pytest.raises(SystemExit) as exc:
        main(["fmri", "evaluate", "--data_dir", str(tiny_prepared), "--checkpoint", str(folder), "--out_dir", str(tmp_path / "res")])
    assert exc.value.code == 2 and "adapter.maps.sub-01" in _one_error_line(capsys)
    with pytest.raises(SystemExit) as exc:
        main(["push", "--release", str(folder), "--repo_id", "someone/x"])
    assert exc.value.code == 2 and "adapter.maps.sub-01" in _one_error_line(capsys)  # checked before the network


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_changed_byte_in_a_release_file_is_refused_by_its_sha256(release, tmp_path, name):
    folder = _copy(release, tmp_path)
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, mid-file: still valid JSON / a readable safetensors file
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match=rf"{name}: sha256 differs from manifest.json.*fix:"):
        load_release(folder)


def test_a_checkpoint_with_damaged_bytes_is_refused_by_its_crc(tiny_checkpoint, tmp_path, capsys):
    """200 KB zeroed mid-file: torch.load would read it and hand back wrong tensors; the zip CRCs refuse it."""
    data = bytearray(tiny_checkpoint.read_bytes())
    mid = len(data) // 2
    span = min(200_000, len(data) // 4)
    data[mid - span // 2: mid + span // 2] = bytes(span)
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match="damaged.ckpt: damaged or not a checkpoint.*CRC.*fix:"):
        load_checkpoint(damaged)
    with pytest.raises(SystemExit) as exc:
        main(["export", "--checkpoint", str(damaged), "--out", str(tmp_path / "rel")])
    assert exc.value.code == 2 and "damaged.ckpt" in _one_error_line(capsys)
    assert not (tmp_path / "rel").exists()
