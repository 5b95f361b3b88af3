"""cvae_exp.metrics.disentanglement against hand computations, sklearn/scipy as independent
references, a loop-by-loop transcription of MIG's definition, and the known answers for a perfect
code, a permuted one, pure noise and a duplicated latent."""

import math
from collections import Counter

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import mutual_info_score

from cvae_exp.metrics.disentanglement import (
    dci,
    discretize,
    entropy,
    factorvae_score,
    mig,
    mig_per_factor,
    mutual_information,
    sap,
)

VOTES = {"num_train": 1000, "num_eval": 500}  # a tenth of the library's votes keeps the file fast
ROUNDS = 10  # gradient boosting rounds for DCI, a tenth of the library's: ample for these codes, and fast


def grid_factors(repeats: int = 10, seed: int = 0) -> np.ndarray:
    """Three independent factors on a full 3 x 4 x 5 grid, each cell `repeats` times, rows shuffled."""
    grid = np.stack(np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij"), axis=-1).reshape(-1, 3)
    factors = np.repeat(grid, repeats, axis=0).astype(np.float64)
    return factors[np.random.default_rng(seed).permutation(len(factors))]


def test_entropy_and_mutual_information_match_a_hand_computed_table():
    # joint p(x, y): (0, 0) 1/4, (0, 1) 1/4, (1, 1) 1/2; p(x) = 1/2, 1/2; p(y) = 1/4, 3/4
    x, y = np.array([[0], [0], [1], [1]]), np.array([[0], [1], [1], [1]])
    by_hand = 0.25 * math.log(0.25 / (0.5 * 0.25)) + 0.25 * math.log(0.25 / (0.5 * 0.75)) + 0.5 * math.log(0.5 / 0.375)
    assert mutual_information(x, y) == pytest.approx(np.array([[by_hand]]), abs=1e-12)
    assert entropy(np.hstack([x, y])) == pytest.approx([math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))])
    assert mutual_information(x, x) == pytest.approx(np.array([[math.log(2)]]))  # I(x; x) = H(x)


def test_mutual_information_and_entropy_match_sklearn_and_scipy():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 6, (300, 3)), rng.integers(-2, 2, (300, 2))
    y[:, 1] = (x[:, 0] + y[:, 1]) % 5  # one dependent pair
    expected = [[mutual_info_score(a, b) for b in y.T] for a in x.T]
    assert mutual_information(x * 0.5, y) == pytest.approx(np.array(expected), abs=1e-12)  # any discrete values
    assert entropy(y) == pytest.approx([scipy.stats.entropy(np.unique(b, return_counts=True)[1]) for b in y.T])


def test_discretize_cuts_equal_width_bins_like_np_histogram():
    assert discretize(np.array([[0.0], [1], [2], [3], [4]]), bins=2).ravel().tolist() == [0, 0, 1, 1, 1]
    x = np.random.default_rng(2).normal(size=(500, 3))
    codes = discretize(x, bins=20)
    assert codes.min() == 0 and codes.max() == 19 and (codes[x.argmax(axis=0), [0, 1, 2]] == 19).all()
    for column, bins in zip(x.T, codes.T):
        assert np.bincount(bins, minlength=20).tolist() == np.histogram(column, 20)[0].tolist()


def mig_by_definition(latents: np.ndarray, factors: np.ndarray, bins: int = 20) -> float:
    """MIG written out: bin each latent into `bins` equal-width bins over [min, max], count the
    joint and marginal frequencies, I(z_j; v_k) = sum p(a, b) log(p(a, b) / (p(a) p(b))), and
    average over factors (top MI - second MI) / H(v_k)."""
    n, binned, gaps = len(latents), [], []
    for column in latents.T:
        low, high = column.min(), column.max()
        binned.append([min(int((value - low) / (high - low) * bins), bins - 1) for value in column])
    for v in factors.T:
        v = v.tolist()
        count_v = Counter(v)
        h = -sum(c / n * math.log(c / n) for c in count_v.values())
        mis = []
        for z in binned:
            count_z, count_zv = Counter(z), Counter(zip(z, v))
            mi = 0.0
            for (a, b), c in count_zv.items():
                mi += c / n * math.log((c / n) / (count_z[a] / n * count_v[b] / n))
            mis.append(mi)
        top, second = sorted(mis, reverse=True)[:2]
        gaps.append((top - second) / h)
    return sum(gaps) / len(gaps)


@pytest.mark.parametrize("kind", ["integer", "continuous"])
def test_mig_matches_a_transcription_of_the_definition(kind):
    rng = np.random.default_rng(3)
    factors = grid_factors(repeats=4)
    mixing = rng.integers(-2, 3, (3, 4))
    if kind == "integer":  # values 0..9: no integer but the ends sits on one of the 20 bins' edges
        latents = (factors.astype(int) @ mixing + rng.integers(0, 3, (len(factors), 4))) % 10
        assert (latents.min(axis=0) == 0).all() and (latents.max(axis=0) == 9).all()
    else:
        latents = factors @ mixing + rng.normal(scale=0.7, size=(len(factors), 4))
    assert mig(latents, factors) == pytest.approx(mig_by_definition(latents.astype(float), factors), abs=1e-12)


def test_a_perfect_code_scores_at_the_top_and_a_permuted_one_the_same():
    factors = grid_factors()
    assert mig(factors, factors) == pytest.approx(1.0, abs=1e-12)
    assert factorvae_score(factors, factors, **VOTES) == 1.0
    scores = dci(factors, factors, n_estimators=ROUNDS)
    assert scores["disentanglement"] > 0.9 and scores["completeness"] > 0.9 and scores["informativeness"] == 1.0
    # a one-vs-rest linear SVM on a single latent tells apart a factor's end values only, so even a
    # perfect code's SAP stays well below 1 (0.45 here; the noise below gets 0.01)
    sap_perfect = sap(factors, factors)
    assert sap_perfect > 0.3

    permuted = factors[:, [2, 0, 1]]
    assert mig(permuted, factors) == pytest.approx(1.0, abs=1e-12)
    assert factorvae_score(permuted, factors, **VOTES) == 1.0
    assert sap(permuted, factors) == sap_perfect


def test_pure_noise_scores_near_zero_and_factorvae_near_chance():
    factors = grid_factors(repeats=20)
    noise = np.random.default_rng(4).normal(size=(len(factors), 5))
    assert mig(noise, factors) < 0.02
    assert sap(noise, factors) < 0.08
    assert factorvae_score(noise, factors, num_train=2000, num_eval=1000) == pytest.approx(1 / 3, abs=0.05)
    assert dci(noise[:, :3], factors, n_estimators=ROUNDS)["disentanglement"] < 0.1


def test_a_latent_duplicated_in_two_dims_has_no_gap_yet_a_high_factorvae_score():
    factors = grid_factors()
    latents = factors[:, [0, 0, 1, 2]]
    assert mig_per_factor(latents, factors) == pytest.approx([0.0, 1.0, 1.0], abs=1e-12)
    assert mig(latents, factors) == pytest.approx(2 / 3, abs=1e-12)
    assert factorvae_score(latents, factors, **VOTES) > 0.99  # fixing factor 0 stills dim 0 (and dim 1)


def test_torch_tensors_views_and_seeds_give_the_same_scores():
    factors = grid_factors()
    latents = factors + np.random.default_rng(5).normal(scale=0.3, size=factors.shape)
    assert mig(torch.tensor(latents, requires_grad=True), torch.tensor(factors)) == mig(latents, factors)
    assert mig(torch.tensor(factors, dtype=torch.bfloat16), factors) == pytest.approx(1.0, abs=1e-12)
    assert mig(latents[:, ::-1], factors[:, ::-1]) == pytest.approx(mig(latents, factors), abs=1e-12)
    once = factorvae_score(latents, factors, seed=7, **VOTES)
    assert factorvae_score(latents, factors, seed=np.random.default_rng(7), **VOTES) == once


@pytest.mark.parametrize(
    "latents, factors, message",
    [
        (np.zeros((10, 3)), np.ones((9, 2)), "latents has N=10 rows and factors N=9"),
        (np.zeros((10, 1)), np.arange(20).reshape(10, 2), "latents has D=1 columns"),
        (np.zeros((10, 3)), np.stack([np.arange(10), np.ones(10)], axis=1), r"factor column\(s\) \[1\] take a single"),
        (np.zeros(10), np.zeros((10, 2)), r"latents has shape \(10,\); it must be 2-D"),
    ],
)
def test_bad_inputs_raise_a_value_error_naming_the_value(latents, factors, message):
    with pytest.raises(ValueError, match=message):
        mig(latents, factors)
    with pytest.raises(ValueError, match=message):
        factorvae_score(latents, factors)


def test_the_test_stage_scores_a_dsprites_run_and_refuses_data_without_factors(tmp_path):
    from cvae_exp import api
    from cvae_exp.errors import UserInputError

    grid = ["data.source.orientations=2", "data.source.positions=4", "data.source.test_size=150"]
    run = api.train(
        [
            "data=dsprites", "task=attributes", "conditioning=none", *grid, "data.val_size=50",
            f"data.source.cache_dir={tmp_path / 'cache'}", "model.latent_dim=4", "trainer.max_epochs=1",
            "eval.disentanglement_metrics=true", "eval.classifier_metrics=false", "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )  # fmt: skip
    test = run.metrics["test"]
    names = ("mig", "factorvae_score", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap")
    assert all(0 <= test[name] <= 1 for name in names), test
    with pytest.raises(UserInputError, match="eval.disentanglement_metrics=True: needs data whose labels are"):
        api.compose(["data=digits", "eval.disentanglement_metrics=true"])
