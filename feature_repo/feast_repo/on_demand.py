"""Request-time features: computed when a request (or a training row) is seen, never stored.

`request_features` combines the request context (time and device, from the `request_context`
request source) with the user's habits from `user_profile`:

    hour_of_day, day_of_week (0 = Monday), is_weekend      from request_ts (UTC)
    daypart_affinity   the user's share of activity in the request's daypart
    device_affinity    the user's share of activity on the request's device (0 for unknown)

Online, pass `request_ts` and `device` with each entity row; for training frames
`feature_repo.store.training_frame` fills them from the label time (and `device` when present).
The function body imports what it needs: Feast serialises it into the registry.
"""

import pandas as pd
from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

from feature_repo.feast_repo import data_sources, feature_views


@on_demand_feature_view(
    sources=[data_sources.request_context, feature_views.user_profile],
    schema=[
        Field(name="hour_of_day", dtype=Int64),
        Field(name="day_of_week", dtype=Int64),
        Field(name="is_weekend", dtype=Int64),
        Field(name="daypart_affinity", dtype=Float64),
        Field(name="device_affinity", dtype=Float64),
    ],
    mode="pandas",
    description="Hour, weekday and the user's affinity for the request's daypart and device.",
)
def request_features(inputs: pd.DataFrame) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    ts = pd.to_datetime(inputs["request_ts"], utc=True)
    hour = ts.dt.hour
    out = pd.DataFrame(index=inputs.index)
    out["hour_of_day"] = hour.astype("int64")
    out["day_of_week"] = ts.dt.dayofweek.astype("int64")
    out["is_weekend"] = (ts.dt.dayofweek >= 5).astype("int64")
    daypart = np.select([hour < 6, hour < 12, hour < 18], ["night", "morning", "afternoon"], "evening")
    shares = {
        p: pd.to_numeric(inputs[f"share_{p}"], errors="coerce") for p in ("night", "morning", "afternoon", "evening")
    }
    out["daypart_affinity"] = np.select([daypart == p for p in shares], [s.to_numpy() for s in shares.values()], np.nan)
    device = inputs["device"].astype(str).to_numpy()
    # Literal on purpose (feature_repo.schema.KNOWN_DEVICES): Feast serializes this function and runs it
    # in the serving process, where it should need nothing but pandas and numpy.
    devices = ("mobile", "desktop", "tv", "tablet")
    device_shares = [pd.to_numeric(inputs[f"share_{d}"], errors="coerce").to_numpy() for d in devices]
    out["device_affinity"] = np.select([device == d for d in devices], device_shares, 0.0)
    out["device_affinity"] = out["device_affinity"].where(pd.notna(inputs["share_mobile"]), np.nan)
    return out
