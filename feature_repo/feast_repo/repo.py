"""Everything the repo declares, gathered in one module.

`feast apply` reads only this file (see .feastignore), so each object is seen once, through the
package imports; `feature_repo.store.repo_objects()` reads the same module.
"""

from feature_repo.feast_repo.data_sources import (  # noqa: F401
    request_context,
    user_features_source,
    user_recent_push,
    user_session_push,
    user_sessions_source,
    video_embeddings_source,
    video_features_source,
)
from feature_repo.feast_repo.entities import user, video  # noqa: F401
from feature_repo.feast_repo.feature_services import ranker_v1  # noqa: F401
from feature_repo.feast_repo.feature_views import (  # noqa: F401
    user_profile,
    user_recent,
    user_session,
    video_embedding,
    video_stats,
)
from feature_repo.feast_repo.on_demand import request_features  # noqa: F401
