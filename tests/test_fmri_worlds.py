"""The fMRI decoder recipe beyond the demo world (issue 13): four small synthetic worlds that differ from
the demo's in voxel count, latent size, noise and target width (litbrain.cli.fmri_worlds.WORLDS, fixed
before any result was seen), each synthesized, prepared, fitted with configs/fmri/demo_ridge.yaml through
the real CLI and scored by `litbrain fmri evaluate`'s code against ridge and the generator's oracle.
`make fmri-worlds` runs the same at demo size."""

import pytest

from litbrain.cli.fmri_worlds import REPO, WORLDS, format_worlds, run_world

# Small worlds: 3 subjects x 1000 own stimuli (900 train / 100 val), 100 shared test stimuli (pool = 100),
# half the worlds' voxel counts.
SMALL = dict(n_subjects=3, n_stimuli=100 + 3 * 1000, n_shared=100)
CONFIG = str(REPO / "configs" / "fmri" / "demo_ridge.yaml")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    out = tmp_path_factory.mktemp("worlds")
    results = {name: run_world(name, out, CONFIG, seed=i + 1, synth=SMALL, scale=0.5,
                               fit_args=["--trainer.max_epochs", "10", "--model.init_args.net.width", "256"])
               for i, name in enumerate(WORLDS)}
    print(format_worlds(results))
    return results


@pytest.mark.slow
def test_the_recipe_beats_ridge_in_both_directions_in_every_world(worlds):
    for name, res in worlds.items():
        by = {r["method"]: r for r in res["rows"]}
        for d in ("brain_to_image", "image_to_brain"):
            assert by["decoder"][d] > by["ridge"][d], (name, d, by["decoder"][d], by["ridge"][d])
