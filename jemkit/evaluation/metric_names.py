"""Names of feature-based sample metrics that say whose features they use.

FID, IS and KID computed on the features of the small digits classifier are not the Inception
FID/IS/KID of the literature and cannot be compared with published numbers, so tables, JSON
labels and docs name them by their features: "digits-FID" vs "Inception FID".
"""

from __future__ import annotations

#: Metric key (as in ``report.json``) -> its name without a feature prefix.
METRICS: dict[str, str] = {
    "fid": "FID",
    "inception_score": "IS",
    "is": "IS",
    "kid": "KID",
    "precision": "precision",
    "recall": "recall",
    "diversity": "diversity",
}

#: Built-in feature extractor -> how its features are named in a metric's label.
FEATURE_NAMES: dict[str, str] = {"inception": "Inception", "digits_classifier": "digits"}

#: Metrics whose name takes the feature name as a prefix ("digits-FID", "Inception FID").
_PREFIXED = ("FID", "IS", "KID")


def feature_name(extractor_name: str) -> str:
    """Short name of an extractor's features: ``Inception``, ``digits``, or the registry name itself."""
    return FEATURE_NAMES.get(extractor_name, extractor_name)


def metric_label(extractor_name: str, metric: str) -> str:
    """Human label of ``metric`` measured with the features of the registered extractor ``extractor_name``.

    ``("digits_classifier", "fid") -> "digits-FID"``, ``("inception", "fid") -> "Inception FID"``,
    ``("inception", "inception_score") -> "Inception Score"``, ``("inception", "kid") -> "Inception KID"``,
    ``("digits_classifier", "precision") -> "precision (digits features)"``; any other extractor is
    named by its registry name (``"clip-FID"``). ``metric`` is a key of :data:`METRICS`.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(sorted(METRICS))}")
    base, features = METRICS[metric], feature_name(extractor_name)
    if base not in _PREFIXED:
        return f"{base} ({features} features)"
    if features == "Inception":
        return "Inception Score" if base == "IS" else f"Inception {base}"
    return f"{features}-{base}"
