"""The synthetic fMRI world's true attributes agree with its captions."""

import pandas as pd

from litbrain.datamodules.fmri.synthetic import ATTRIBUTES, stimulus_attributes, synthesize_fmri


def test_attributes_are_the_words_of_each_caption(tmp_path):
    raw = tmp_path / "raw"
    synthesize_fmri(raw, n_subjects=1, n_stimuli=40, n_shared=10, n_voxels=60, trials_per_session=40, seed=3)
    att = stimulus_attributes(raw)
    stim = pd.read_csv(raw / "stimuli.tsv", sep="\\t", dtype=str)
    assert list(att["stimulus_id"]) == list(stim["stimulus_id"])
    caps = pd.read_csv(raw / "captions.tsv", sep="\\t", dtype=str)
    row = {sid: i for i, sid in enumerate(att["stimulus_id"])}
    for sid, words in zip(caps["stimulus_id"], caps["caption"]):
        i = row[sid]
        assert ATTRIBUTES["colour"][att["colour"][i]] in words.split(" ") or f"{ATTRIBUTES['colour'][att['colour'][i]]}," in words
        if "stripes" in words or "lines" in words:  # the phrasings that name the grating
            assert ATTRIBUTES["stripes"][att["stripes"][i]] in words
    assert set(att["colour"]) <= {0, 1, 2} and len(set(att["colour"])) > 1
