"""Feature services: one per ranker version, named `ranker_v{n}`.

A ranker version is trained on, and served with, exactly the features of its service; the
MLflow ranker version carries the service name as a tag (see DESIGN.md). Feature sets are
declared here by version and never edited once a version is registered: a new feature set
is a new version. Training code that registers a version without a new feature set gets the
newest declared set under its own name through `ranker_feature_service(n)`; such services
are applied at runtime (`feature_repo.store.register_ranker_service`) and kept by
`apply_repo`.

All retrieval uses full feature names (`<view>__<feature>`), since users and videos share
feature names (avg_rating, like_ratio).
"""

from __future__ import annotations

import re

from feast import FeatureService

from feature_repo.feast_repo import feature_views as fv
from feature_repo.feast_repo import on_demand

SERVICE_PREFIX = "ranker_v"
_NAME = re.compile(rf"^{SERVICE_PREFIX}(\d+)$")

# version -> the feature views (or projections) the ranker of that version reads.
RANKER_FEATURE_SETS: dict[int, list] = {
    1: [fv.user_profile, fv.user_recent, fv.video_stats, on_demand.request_features],
}


def service_name(version: int) -> str:
    if int(version) < 1:
        raise ValueError(f"ranker versions start at 1, got {version}")
    return f"{SERVICE_PREFIX}{int(version)}"


def service_version(name: str) -> int | None:
    """The ranker version a service name stands for, or None if it is not a ranker service."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def ranker_feature_service(version: int, features: list | None = None) -> FeatureService:
    """The feature service of ranker version `version`.

    Features: the given ones, else the set declared for that version, else the newest declared set.
    """
    if features is None:
        declared = [v for v in RANKER_FEATURE_SETS if v <= int(version)]
        features = RANKER_FEATURE_SETS[max(declared) if declared else min(RANKER_FEATURE_SETS)]
    return FeatureService(
        name=service_name(version),
        features=list(features),
        description=f"Features of vidrec-ranker version {int(version)}.",
        tags={"ranker_version": str(int(version))},
    )


ranker_v1 = ranker_feature_service(1)
