"""The four standard disentanglement metrics (MIG, FactorVAE score, DCI, SAP) as pure functions
of a table: `latents` (N, D), a model's posterior means, and `factors` (N, K), the ground-truth
factors of the same N images (dSprites: shape, scale, orientation, x, y).

Each follows its paper as disentanglement_lib (Locatello et al. 2019) implements it, with the
settings of that library's study as defaults; where the library samples from a ground-truth
simulator, these functions sample the given rows instead. Factors are read as discrete labels, each distinct value of a
column a class, as every one of the four definitions treats them (bin a continuous factor with
`discretize` first). The library scores 10,000 training and 5,000 test points: pass about 15,000
rows, since the cost of DCI and SAP grows with N. Arrays are numpy arrays or torch tensors.
"""

import numpy as np
import scipy.stats
import torch
from scipy.special import xlogy
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.svm import LinearSVC

TEST_FRACTION = 1 / 3  # disentanglement_lib's 5,000 test points next to 10,000 training ones


def discretize(x, bins: int = 20) -> np.ndarray:
    """Each column of `x` (N, D) cut into `bins` equal-width bins between its min and max, as
    bin indices 0..bins-1 (the maximum in the last bin): disentanglement_lib's
    histogram_discretizer, np.digitize against np.histogram's edges."""
    x = _array("x", x)
    edges = [np.histogram(column, bins)[1][1:-1] for column in x.T]  # inner edges: bin 0 starts at -inf
    return np.stack([np.digitize(column, inner) for column, inner in zip(x.T, edges)], axis=1)


def entropy(labels) -> np.ndarray:
    """H(y_k) in nats of each column of the discrete `labels` (N, K), from the empirical frequencies."""
    p = [np.bincount(column) / len(column) for column in _labels(_array("labels", labels)).T]
    return np.array([-np.sum(xlogy(pk, pk)) for pk in p])


def mutual_information(x, y) -> np.ndarray:
    """I(x_j; y_k) in nats, (D, K), between each column of the discrete `x` (N, D) and each of the
    discrete `y` (N, K): the plug-in estimate from their joint histogram, which is what
    disentanglement_lib's sklearn.metrics.mutual_info_score computes."""
    x, y = _labels(_array("x", x)), _labels(_array("y", y))
    _same_rows(x, y, "x", "y")
    mi = np.zeros((x.shape[1], y.shape[1]))
    for j, a in enumerate(x.T):
        for k, b in enumerate(y.T):
            size_a, size_b = a.max() + 1, b.max() + 1
            joint = np.bincount(a * size_b + b, minlength=size_a * size_b).reshape(size_a, size_b) / len(a)
            mi[j, k] = np.sum(xlogy(joint, joint / np.outer(joint.sum(1), joint.sum(0))))
    return mi


def mig_per_factor(latents, factors, *, bins: int = 20) -> np.ndarray:
    """Each factor's mutual information gap (K,): (I(z_a; v_k) - I(z_b; v_k)) / H(v_k), with z_a and
    z_b the two latents most informative about v_k. Chen et al. 2018 ("Isolating Sources of
    Disentanglement in VAEs"), with disentanglement_lib's estimate: latents in `bins` (20)
    equal-width bins (`discretize`), plug-in mutual information. A factor two latents share has a
    gap of 0, however well they capture it."""
    latents, factors = _checked(latents, factors)
    mi = np.sort(mutual_information(discretize(latents, bins), factors), axis=0)
    return (mi[-1] - mi[-2]) / entropy(factors)


def mig(latents, factors, *, bins: int = 20) -> float:
    """The mutual information gap, the mean over factors of `mig_per_factor`: 1 for a code with one
    latent per factor, 0 where no latent says more about a factor than the next one does."""
    return float(mig_per_factor(latents, factors, bins=bins).mean())


def factorvae_score(
    latents,
    factors,
    *,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    prune_threshold: float = 0.05,
    seed: int | np.random.Generator = 0,
) -> float:
    """Kim & Mnih 2018 ("Disentangling by Factorising"), as disentanglement_lib's
    compute_factor_vae (batch 64, 10,000 and 5,000 votes, threshold 0.05): each latent is divided
    by its std over all rows, and
    latents whose std is below `prune_threshold` (collapsed to the prior) are left out. A vote
    picks a factor k uniformly and a value of it (that of a uniform random row), draws
    `batch_size` rows with that value (with replacement: i.i.d. draws given the value, what the
    library's sampler gives), and votes (k, d) for the latent d of least variance over the batch.
    A majority-vote classifier d -> k is fitted on `num_train` votes; the score is its accuracy on
    `num_eval` fresh votes: 1 where fixing any factor stills one latent of its own, 1/K by chance.
    0 where every latent is pruned. `seed` makes the votes reproducible."""
    latents, factors = _checked(latents, factors)
    rng = np.random.default_rng(seed)
    std = latents.std(axis=0, ddof=1)
    active = np.flatnonzero(std >= prune_threshold)
    if active.size == 0:
        return 0.0
    normalised = latents[:, active] / std[active]
    num_factors, num_latents = factors.shape[1], latents.shape[1]
    rows_with = [[np.flatnonzero(column == value) for value in range(column.max() + 1)] for column in factors.T]

    def votes(count: int) -> np.ndarray:
        table = np.zeros((num_factors, num_latents), dtype=np.int64)
        for _ in range(count):
            k = rng.integers(num_factors)
            rows = rows_with[k][factors[rng.integers(len(factors)), k]]
            batch = normalised[rows[rng.integers(len(rows), size=batch_size)]]
            table[k, active[np.argmin(batch.var(axis=0, ddof=1))]] += 1
        return table

    classifier = votes(num_train).argmax(axis=0)  # each latent's majority factor
    return float(votes(num_eval)[classifier, np.arange(num_latents)].sum() / num_eval)


def dci(latents, factors, *, n_estimators: int = 100, seed: int | np.random.Generator = 0) -> dict[str, float]:
    """Disentanglement, completeness and informativeness of Eastwood & Williams 2018 ("A Framework
    for the Quantitative Evaluation of Disentangled Representations"), as disentanglement_lib's
    compute_dci: one gradient boosted trees classifier per factor (sklearn's
    GradientBoostingClassifier with its defaults, `n_estimators` 100 boosting rounds; fewer run
    faster), fitted on a random 2/3 of the rows; its feature
    importances make column k of the importance matrix R (D, K), each column summing to 1.
    disentanglement = sum_j rho_j (1 - H_K(P_j.)), P_jk = R_jk / sum_k R_jk, rho_j = sum_k R_jk / sum R;
    completeness = mean_k (1 - H_D(R_.k)) (the library's importance-weighted mean, with equal
    weights since each column sums to 1); entropies in base K and D, over R + 1e-11 as the library
    does; informativeness = the classifiers' mean accuracy on the other 1/3 of the rows."""
    latents, factors = _checked(latents, factors)
    rng = np.random.default_rng(seed)
    train, test = _split(len(latents), rng)
    importance = np.zeros((latents.shape[1], factors.shape[1]))
    accuracy = np.zeros(factors.shape[1])
    for k, labels in enumerate(factors.T):
        model = GradientBoostingClassifier(n_estimators=n_estimators, random_state=int(rng.integers(2**31)))
        model.fit(latents[train], labels[train])
        importance[:, k] = model.feature_importances_
        accuracy[k] = model.score(latents[test], labels[test])
    per_latent = 1 - scipy.stats.entropy(importance + 1e-11, base=importance.shape[1], axis=1)
    per_factor = 1 - scipy.stats.entropy(importance + 1e-11, base=importance.shape[0], axis=0)
    rho = importance.sum(axis=1) / importance.sum()
    return {
        "disentanglement": float(rho @ per_latent),
        "completeness": float(per_factor.mean()),
        "informativeness": float(accuracy.mean()),
    }


def sap(latents, factors, *, seed: int | np.random.Generator = 0) -> float:
    """The Separated Attribute Predictability score of Kumar et al. 2018 ("Variational Inference of
    Disentangled Latent Concepts from Unlabeled Observations"), as disentanglement_lib's
    compute_sap for discrete factors (continuous_factors=False): S_jk is the test accuracy of a
    linear SVM (sklearn's LinearSVC, C=0.01, balanced class weights, one-vs-rest) that predicts
    factor k from latent j alone, fitted on a random 2/3 of the rows and scored on the rest;
    SAP = mean_k of the gap between the two largest S_jk over latents."""
    latents, factors = _checked(latents, factors)
    train, test = _split(len(latents), np.random.default_rng(seed))
    scores = np.zeros((latents.shape[1], factors.shape[1]))
    for j, z in enumerate(latents.T[:, :, None]):
        for k, labels in enumerate(factors.T):
            svm = LinearSVC(C=0.01, class_weight="balanced", random_state=0).fit(z[train], labels[train])
            scores[j, k] = svm.score(z[test], labels[test])
    scores = np.sort(scores, axis=0)
    return float(np.mean(scores[-1] - scores[-2]))


def scores(latents, factors, *, seed: int = 0) -> dict[str, float]:
    """All four metrics of one table, by the names the test stage logs (test/<name>)."""
    parts = dci(latents, factors, seed=seed)
    return {
        "mig": mig(latents, factors),
        "factorvae_score": factorvae_score(latents, factors, seed=seed),
        **{f"dci_{name}": value for name, value in parts.items()},
        "sap": sap(latents, factors, seed=seed),
    }


def _array(name: str, x) -> np.ndarray:
    if isinstance(x, torch.Tensor):  # bfloat16, which bf16-mixed precision gives, has no numpy dtype
        x = x.detach().cpu()
        x = (x.double() if x.is_floating_point() else x).numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} has shape {x.shape}; it must be 2-D, one row per sample (N, columns)")
    return x


def _labels(x: np.ndarray) -> np.ndarray:
    """Each column's values as labels 0..n-1, in sorted order, every label taken."""
    return np.stack([np.unique(column, return_inverse=True)[1].reshape(-1) for column in x.T], axis=1)


def _same_rows(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"{name_a} has N={len(a)} rows and {name_b} N={len(b)}; they must describe the same samples, one row each"
        )


def _checked(latents, factors) -> tuple[np.ndarray, np.ndarray]:
    """The latents as float64 (N, D) and the factors as labels (N, K), or a ValueError naming the bad value."""
    latents, factors = _array("latents", latents).astype(np.float64), _array("factors", factors)
    _same_rows(latents, factors, "latents", "factors")
    if latents.shape[1] < 2:
        raise ValueError(f"latents has D={latents.shape[1]} columns; the metrics compare latents, so need D >= 2")
    factors = _labels(factors)
    single = [k for k, column in enumerate(factors.T) if column.max() == 0]
    if single:
        raise ValueError(
            f"factor column(s) {single} take a single value; every factor needs at least 2 values (drop constant ones)"
        )
    return latents, factors


def _split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random training and test rows, TEST_FRACTION of them for testing."""
    order = rng.permutation(n)
    num_test = round(n * TEST_FRACTION)
    return order[num_test:], order[:num_test]
