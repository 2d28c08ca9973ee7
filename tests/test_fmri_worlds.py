"""The fMRI decoder recipe beyond the demo world (issue 13): four small synthetic worlds that differ from
the demo's in voxel count, latent size, noise and target width (litbrain.cli.fmri_worlds.WORLDS, fixed
before any result was seen), each synthesized, prepared, fitted with configs/fmri/demo_ridge.yaml through
the real CLI and scored by `litbrain fmri evaluate`'s code against ridge and the generator's oracle.
`make fmri-worlds` runs the same at demo size."""

import pytest

from litbrain.cli.fmri_worlds import REPO, WORLDS, format_worlds, run_world

# Small worlds: 3 subjects x 600 own stimuli (540 train / 60 val), 100 shared test stimuli (pool = 100).
SMALL = dict(n_subjects=3, n_stimuli=100 + 3 * 600, n_shared=100)
CONFIG = str(REPO / "configs" / "fmri" / "demo_ridge.yaml")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    out = tmp_path_factory.mktemp("worlds")
    results = {name: run_world(name, out, CONFIG, seed=i + 1, synth=SMALL, scale=0.25,
                               fit_args=["--trainer.max_epochs", "12", "--model.init_args.net.width", "256"])
               for i, name in enumerate(WORLDS)}
    print(format_worlds(results))
    return results


@pytest.mark.slow
def test_the_recipe_beats_ridge_in_both_directions_in_every_world(worlds):
    for name, res in worlds.items():
        by = {r["method"]: r for r in res["rows"]}
        for d in ("brain_to_image", "image_to_brain"):
            assert by["decoder"][d] > by["ridge"][d], (name, d, by["decoder"][d], by["ridge"][d])
