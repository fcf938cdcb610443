"""Cluster-quality metrics of a clustering of the sweep's customers (the sample on the driver, see
sweep.py), from per-cluster sums: silhouette, WSSSE, Calinski-Harabasz, Davies-Bouldin, the gap
statistic, and the same sums under bootstrap weights for their noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

CLUSTER = "cluster"  # the clustering's own cluster index
SEGMENT = "segment"  # the run's segment id (see segments.py)
FEATURES = "features"  # the scaled vector the clustering sees (see prepare.py)
DISTANCE = "distance"  # from a customer to their cluster's centre, in the scaled space


BOOTSTRAP_REPLICATES = 30  # Poisson-weighted replicates of every sum below: the metrics' noise


@dataclass(frozen=True)
class ClusterStats:
    """Per-cluster sums of a clustering, enough for every metric: silhouette, WSSSE, Calinski-Harabasz
    and Davies-Bouldin; with the same sums under Poisson bootstrap weights, enough for their noise."""

    clusters: list[int]  # the non-empty clusters' indices, in the order of the arrays below
    counts: np.ndarray  # n_j
    means: np.ndarray  # m_j (k x d)
    within: np.ndarray  # sum of squared distances to m_j, per cluster
    spread: np.ndarray  # mean Euclidean distance to m_j, per cluster
    silhouettes: np.ndarray  # sum of the customers' silhouette coefficients, per cluster
    # B x k each: the sums of weights, squared distances, distances and silhouettes per replicate
    replicates: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def wssse(self) -> float:
        return float(self.within.sum())

    @property
    def silhouette(self) -> float:
        """Mean silhouette with squared Euclidean distance, as Spark's ClusteringEvaluator defines it."""
        return float(self.silhouettes.sum() / self.counts.sum())

    @property
    def calinski_harabasz(self) -> float:
        """Between- over within-cluster dispersion, each per degree of freedom (Calinski & Harabasz 1974)."""
        return _calinski_harabasz(self.counts, self.means, self.wssse)

    @property
    def davies_bouldin(self) -> float:
        """Mean over clusters of the worst (s_i + s_j) / d(m_i, m_j) (Davies & Bouldin 1979); lower wins."""
        return _davies_bouldin(self.means, self.spread)

    def bootstrap(self) -> dict[str, np.ndarray]:
        """Each metric once per bootstrap replicate (B values), with this clustering's centres kept."""
        weights, within = self.replicates["weights"], self.replicates["within"]
        spread = self.replicates["distances"] / np.where(weights > 0, weights, 1.0)
        return {
            "silhouette": self.replicates["silhouettes"].sum(axis=1) / weights.sum(axis=1),
            "wssse": within.sum(axis=1),
            "calinski_harabasz": np.array(
                [_calinski_harabasz(w, self.means, s.sum()) for w, s in zip(weights, within, strict=True)]
            ),
            "davies_bouldin": np.array([_davies_bouldin(self.means, s) for s in spread]),
        }


def _calinski_harabasz(counts: np.ndarray, means: np.ndarray, wssse: float) -> float:
    n, k = counts.sum(), len(counts)
    if k < 2 or wssse == 0:
        return math.nan
    centre = (counts[:, None] * means).sum(axis=0) / n
    between = float((counts * ((means - centre) ** 2).sum(axis=1)).sum())
    return between / (k - 1) / (wssse / (n - k))


def _davies_bouldin(means: np.ndarray, spread: np.ndarray) -> float:
    k = len(means)
    if k < 2:
        return math.nan
    distance = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=2)
    ratio = (spread[:, None] + spread[None, :]) / np.where(distance > 0, distance, np.inf)
    np.fill_diagonal(ratio, -np.inf)
    return float(ratio.max(axis=1).mean())


def poisson_weights(rows: int, replicates: int, seed: int) -> np.ndarray:
    """How often each row appears in each of ``replicates`` bootstrap resamples (rows x B): Poisson(1)
    draws, the same for every k fitted to the same rows, so k values are compared on the same resamples."""
    return np.random.default_rng(seed).poisson(1.0, size=(rows, replicates)).astype(float)


def cluster_stats(
    points: np.ndarray, labels: np.ndarray, replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0
) -> ClusterStats:
    """Counts, means and sums of squares per cluster; with those, each customer's distance to its centre
    and silhouette, summed per cluster, plainly and under Poisson bootstrap weights.

    The silhouette is Spark's (ClusteringEvaluator, squared Euclidean): for a customer x in cluster A,
    the mean squared distance to the members of a cluster C is ||x||^2 - 2 x.m_C + mean_C ||y||^2, so
    it needs only each cluster's count, mean and mean squared norm (O(n k d), never the n^2 of pairwise
    distances); a excludes x itself (n_A / (n_A-1)) and a customer alone in its cluster scores 0.
    """
    clusters, own = np.unique(labels, return_inverse=True)
    n, k = len(own), len(clusters)
    rows = np.arange(n)
    members = sparse.csr_matrix((np.ones(n), (own, rows)), shape=(k, n))  # cluster x customer
    counts = np.bincount(own, minlength=k).astype(float)
    means = (members @ points) / counts[:, None]
    xx = np.einsum("ij,ij->i", points, points)
    squared_norms = members @ xx
    dots = points @ means.T  # n x k
    to_members = xx[:, None] - 2 * dots + (squared_norms / counts)[None, :]
    size = counts[own]
    a = to_members[rows, own] * size / np.maximum(size - 1, 1)
    coefficient = np.zeros(n)
    if k > 1:
        to_members[rows, own] = np.inf
        b = to_members.min(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            coefficient = np.select([size <= 1, a < b, a > b], [0.0, 1 - a / b, b / a - 1], 0.0)
    squared = np.maximum(xx - 2 * dots[rows, own] + (means**2).sum(axis=1)[own], 0.0)
    distance = np.sqrt(squared)
    weights = poisson_weights(n, replicates, seed)

    def per_replicate(values: np.ndarray) -> np.ndarray:  # B x k
        return (members @ (weights * values[:, None])).T

    return ClusterStats(
        clusters=clusters.tolist(),
        counts=counts,
        means=means,
        # sum ||x - m||^2 = sum ||x||^2 - n ||m||^2: exact in the scaled space, where values are O(1)
        within=np.maximum(squared_norms - counts * (means**2).sum(axis=1), 0.0),
        spread=(members @ distance) / counts,
        silhouettes=members @ coefficient,
        replicates={
            "weights": (members @ weights).T,
            "within": per_replicate(squared),
            "distances": per_replicate(distance),
            "silhouettes": per_replicate(coefficient),
        },
    )


def knee_scores(ks: list[int], values: list[float]) -> np.ndarray:
    """Kneedle (Satopää et al. 2011) for a decreasing curve such as WSSSE: after scaling both axes to
    [0, 1], how far each point lies below the straight line from the first point to the last. The
    elbow is the k with the highest score."""
    if len(ks) < 3:
        return np.zeros(len(ks))
    x = (np.array(ks, dtype=float) - ks[0]) / (ks[-1] - ks[0])
    y = np.array(values, dtype=float)
    span = y.max() - y.min()
    y = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    return (1 - x) - y


@dataclass(frozen=True)
class Gap:
    gap: float
    sd: float  # s_k = sd of the reference log(W) * sqrt(1 + 1/B)


def reference_sets(points: np.ndarray, references: int, seed: int) -> list[np.ndarray]:
    """B data sets drawn uniformly over the bounding box of the scaled features, each of the same size."""
    rng = np.random.default_rng(seed)
    low, high = points.min(axis=0), points.max(axis=0)
    return [rng.uniform(low, high, size=points.shape) for _ in range(references)]


def gap_statistic(log_w: float, reference_log_w: list[float]) -> Gap:
    """Gap(k) = mean_b log(W*_kb) - log(W_k) (Tibshirani, Walther & Hastie 2001)."""
    reference = np.array(reference_log_w)
    b = len(reference)
    return Gap(float(reference.mean() - log_w), float(reference.std(ddof=0) * math.sqrt(1 + 1 / b)))
