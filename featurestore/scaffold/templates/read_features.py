"""Read the features MLFS wrote with the stock Feast SDK: `python read_features.py`."""

import atexit
import os
import sys
import warnings
from datetime import datetime, timedelta, timezone

import pandas as pd
from feast import FeatureStore

# Feast's file offline store (ibis over DuckDB) calls a DuckDB method DuckDB has deprecated, and at
# exit DuckDB's bindings list the objects ibis still holds: neither says anything about the features.
warnings.filterwarnings("ignore", message="fetch_arrow_table", category=DeprecationWarning)


def _quiet_teardown() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # after the script: only the interpreter's teardown


atexit.register(_quiet_teardown)

store = FeatureStore(repo_path=".")
features = [
    "user_payment_stats_7d:payment_count_7d",
    "user_payment_stats_7d:amount_sum_7d",
    "user_payment_stats_7d:fail_count_7d",
    "user_last_payment_fail:latest_payment_fail",
    "user_last_payment_fail:latest_payment_fail_ach_nsf",
]

if __name__ == "__main__":
    if any(v.name == "user_failure_semantics_7d" for v in store.list_feature_views()):
        features += [  # the view scored by all-MiniLM-L6-v2 (`mlfs init --with-embeddings`)
            "user_failure_semantics_7d:fails_7d",
            "user_failure_semantics_7d:shortfall_similarity_max_7d",
        ]
    joined = []
    if any(v.name == "user_refunds_30d" for v in store.list_feature_views()):
        joined = [  # the views with joins (`mlfs init --with-joins`)
            "user_amount_vs_habit_7d:amount_ratio_max_7d",
            "user_refunds_30d:refunded_payments_30d",
            "user_refunds_30d:refunded_amount_30d",
        ]
        features += joined
    users = [{"user_id": f"u{i:04d}"} for i in range(3)]
    online = store.get_online_features(features=features, entity_rows=users).to_df()
    print("Online features (latest values):")
    print(online.to_string(index=False))

    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    entity_df = pd.DataFrame(
        {"user_id": ["u0000", "u0000", "u0001"],
         "event_timestamp": [now - timedelta(days=10), now - timedelta(days=2), now - timedelta(days=2)]}
    )
    history = store.get_historical_features(entity_df=entity_df, features=features[:3] + joined).to_df()
    print("\nPoint-in-time features (training data):")
    print(history.to_string(index=False))
