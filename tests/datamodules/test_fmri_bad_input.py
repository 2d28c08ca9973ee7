"""Bad input: one clear DataError each (file/field named + a fix), nothing half-written."""

import gzip

import nibabel as nib
import numpy as np
import pytest
from litbrain.datamodules import DataError, FmriDataModule, prepare_fmri

from tests.helpers.fmri_rawkit import simple_spec, write_raw


def _assert_clean(tmp_path, out_name="prep"):
    assert not (tmp_path / out_name).exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.fixture
def raw(tmp_path, rng):
    spec, stimuli = simple_spec(rng)
    spec2, _ = simple_spec(rng, shape=(5, 4, 3))
    return write_raw(tmp_path / "raw", {"sub-01": spec, "sub-02": spec2}, stimuli)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_nifti(tmp_path, raw, keep):
    _truncate(raw / "sub-02" / "betas_session03.nii.gz", keep)  # 0.9: header intact, data cut
    with pytest.raises(DataError, match=r"sub-02/betas_session03\.nii\.gz: .*truncated or corrupt.*"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    _assert_clean(tmp_path)


def test_corrupt_nifti_header(tmp_path, raw):
    (raw / "sub-01" / "betas_session02.nii.gz").write_bytes(gzip.compress(b"not a nifti" * 10))
    with pytest.raises(DataError, match=r"sub-01/betas_session02\.nii\.gz: cannot be read as NIfTI.*fix:"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    _assert_clean(tmp_path)


def test_mask_shape_mismatch(tmp_path, raw):
    nib.save(nib.Nifti1Image(np.ones((4, 5, 4), np.uint8), np.eye(4)), raw / "sub-01" / "mask.nii.gz")
    with pytest.raises(DataError, match=r"sub-01/betas_session01\.nii\.gz: volume shape \(4, 5, 3\) does not match "
                                        r"sub-01/mask\.nii\.gz shape \(4, 5, 4\).*fix: resample"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    _assert_clean(tmp_path)


def test_nan_betas_leave_nothing(tmp_path, raw):
    p = raw / "sub-02" / "betas_session02.nii.gz"
    data = np.asarray(nib.load(p).dataobj).astype(np.float32)
    data[1, 1, 1, 3] = np.nan
    data[2, 2, 2, 4] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), p)
    with pytest.raises(DataError, match=r"sub-02/betas_session02\.nii\.gz: 2 NaN/inf value\(s\) inside the mask "
                                        r"\(first: volume 4, voxel \[1, 1, 1\]\).*fix:"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    _assert_clean(tmp_path)


def test_failure_with_overwrite_keeps_the_old_output(tmp_path, raw):
    out = prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _truncate(raw / "sub-02" / "betas_session03.nii.gz", 0.9)
    with pytest.raises(DataError, match="cannot read volumes .*truncated or corrupt"):
        prepare_fmri(raw, out, val_fraction=0.25, overwrite=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def _rewrite_trials(raw, sid, fn):
    p = raw / sid / "trials.tsv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join([lines[0]] + [fn(i, line) for i, line in enumerate(lines[1:])]) + "\n")


def test_unknown_stimulus(tmp_path, raw):
    _rewrite_trials(raw, "sub-01", lambda i, l: l.rsplit("\t", 1)[0] + "\tghost" if i == 5 else l)
    with pytest.raises(DataError, match=r"sub-01/trials\.tsv: 1 stimulus_id\(s\) not in stimuli\.tsv \(ghost\).*fix:"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    _assert_clean(tmp_path)


def test_trial_beyond_volume_count(tmp_path, raw):
    _rewrite_trials(raw, "sub-01", lambda i, l: "2\t13\t" + l.split("\t")[2] if i == 12 else l)
    with pytest.raises(DataError, match=r"sub-01/trials\.tsv: session 2 lists trial 13 but "
                                        r"sub-01/betas_session02\.nii\.gz has only 12 volume\(s\).*fix:"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    _assert_clean(tmp_path)


def test_trial_table_missing_column(tmp_path, raw):
    p = raw / "sub-01" / "trials.tsv"
    p.write_text(p.read_text().replace("stimulus_id", "image_id", 1))
    with pytest.raises(DataError, match=r"trials\.tsv \(trial table\): missing column\(s\) \['stimulus_id'\].*fix:"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)


def test_unknown_subject_prepare(tmp_path, raw):
    with pytest.raises(DataError, match=r"subject\(s\) \['sub-09'\] have no data \(available: \['sub-01', 'sub-02'\]\)"):
        prepare_fmri(raw, tmp_path / "prep", subjects=["sub-01", "sub-09"])
    _assert_clean(tmp_path)


def test_no_shared_stimuli_empty_test(tmp_path, raw):
    p = raw / "stimuli.tsv"
    p.write_text(p.read_text().replace("\t1\n", "\t0\n"))
    with pytest.raises(DataError, match=r"sub-01/trials\.tsv: test split is empty.*fix: mark the shared"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    _assert_clean(tmp_path)


def test_val_fraction_leaves_no_rows(tmp_path, raw):
    with pytest.raises(DataError, match=r"val split is empty \(val_fraction=0.01 of 20 non-shared.*fix: raise"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.01)
    _assert_clean(tmp_path)


def test_missing_embeddings_for_a_stimulus(tmp_path, raw):
    with np.load(raw / "embeddings" / "image.npz") as f:
        ids, emb = f["ids"], f["embeddings"]
    np.savez(raw / "embeddings" / "image.npz", ids=ids[1:], embeddings=emb[1:])
    with pytest.raises(DataError, match=r"embeddings/image\.npz: no embedding for 1 stimulus id\(s\).*s000.*fix:"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    _assert_clean(tmp_path)


def test_embedding_ids_saved_as_objects(tmp_path, raw):
    # np.savez of a list of Python strings with mixed types gives an object array: readable only with pickle.
    with np.load(raw / "embeddings" / "image.npz") as f:
        ids, emb = f["ids"], f["embeddings"]
    np.savez(raw / "embeddings" / "image.npz", ids=np.array(list(ids), dtype=object), embeddings=emb)
    with pytest.raises(DataError, match=r"embeddings/image\.npz: 'ids' has dtype object .*fix: store them as strings"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    _assert_clean(tmp_path)


def test_datamodule_missing_or_unprepared_dir(tmp_path):
    with pytest.raises(DataError, match=r"prepared fMRI dataset folder not found; fix: run `litbrain fmri prepare`"):
        FmriDataModule(str(tmp_path / "nope"))
    (tmp_path / "raw_only").mkdir()
    with pytest.raises(DataError, match=r"manifest\.json: not found.*not a prepared fMRI dataset; fix:"):
        FmriDataModule(str(tmp_path / "raw_only"))


def test_datamodule_unknown_subject(tiny_prepared):
    with pytest.raises(DataError, match=r"\['sub-07'\] not prepared \(available: \['sub-01', 'sub-02', 'sub-03'\]\)"):
        FmriDataModule(str(tiny_prepared), subjects=["sub-01", "sub-07"])
