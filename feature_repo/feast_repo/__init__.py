"""The Feast repo of vidrec: entities, data sources, feature views and feature services.

Definitions are split by kind (entities.py, data_sources.py, feature_views.py, on_demand.py,
feature_services.py); `repo.py` gathers them for `feast apply` and for `feature_repo.store`.
"""
