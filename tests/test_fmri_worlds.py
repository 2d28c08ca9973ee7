"""The fMRI decoder recipe beyond the demo world (issue 13): four small synthetic worlds that differ from
the demo's in voxel count, latent size, noise and target width (litbrain.cli.fmri_worlds.WORLDS, fixed
before any result was seen), each synthesized, prepared, fitted with configs/fmri/demo_ridge.yaml through
the real CLI and scored by `litbrain fmri evaluate`'s code against ridge and the generator's oracle.
`make fmri-worlds` runs the same at demo size.

The bar is asserted in every world. Where it is not met at this size the case is marked xfail with the
measured figures (not skipped): at test size the two noisiest worlds leave the recipe at ridge's level,
and only w2 reaches 90% of the oracle (see the report / README for the demo-size table).
"""

import pytest

from litbrain.cli.fmri_worlds import REPO, WORLDS, format_worlds, run_world

# Small worlds: 3 subjects x 1000 own stimuli (900 train / 100 val), 100 shared test stimuli (pool = 100),
# half the worlds' voxel counts.
SMALL = dict(n_subjects=3, n_stimuli=100 + 3 * 1000, n_shared=100)
CONFIG = str(REPO / "configs" / "fmri" / "demo_ridge.yaml")
DIRECTIONS = ("brain_to_image", "image_to_brain")

# Measured at this size (decoder / ridge / oracle, b->i and i->b, %): w1 19.0/29.3, 19.7/30.0, 69.3/72.0;
# w3 15.0/25.0, 18.3/25.7, 79.0/83.0; w4 63.7/68.0, 47.3/61.7, 87.3/89.7.
NOT_MET_RIDGE = {"w1": "at test size the recipe stays at ridge (19.0/29.3 vs 19.7/30.0)",
                 "w3": "at test size the recipe stays below ridge (15.0/25.0 vs 18.3/25.7)"}
NOT_MET_ORACLE = {"w1": "0.27/0.41 of the oracle at test size", "w3": "0.19/0.30 of the oracle at test size",
                  "w4": "0.73/0.76 of the oracle at test size"}


def _cases(not_met):
    return [pytest.param(w, marks=pytest.mark.xfail(reason=f"NOT MET: {not_met[w]}", strict=False))
            if w in not_met else w for w in WORLDS]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    out = tmp_path_factory.mktemp("worlds")
    results = {name: run_world(name, out, CONFIG, seed=i + 1, synth=SMALL, scale=0.5,
                               fit_args=["--trainer.max_epochs", "10", "--model.init_args.net.width", "256"])
               for i, name in enumerate(WORLDS)}
    print(format_worlds(results))
    return {name: {r["method"]: r for r in res["rows"]} for name, res in results.items()}


@pytest.mark.slow
@pytest.mark.parametrize("world", _cases(NOT_MET_RIDGE))
def test_the_recipe_beats_ridge_in_both_directions(worlds, world):
    by = worlds[world]
    for d in DIRECTIONS:
        assert by["decoder"][d] > by["ridge"][d], (world, d, by["decoder"][d], by["ridge"][d])


@pytest.mark.slow
@pytest.mark.parametrize("world", _cases(NOT_MET_ORACLE))
def test_the_recipe_reaches_90_percent_of_the_oracle(worlds, world):
    by = worlds[world]
    for d in DIRECTIONS:
        assert by["decoder"][d] >= 0.9 * by["oracle"][d], (world, d, by["decoder"][d], by["oracle"][d])
