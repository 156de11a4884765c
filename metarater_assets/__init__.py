"""metarater: the Meta-rater data-selection method as a Dagster asset graph."""
__version__ = "0.1.0"

import warnings as _warnings

# Dagster notes, on every import and every per-shard run, that `backfill_policy` is beta and that
# a job over assets with and without a batch policy falls back to one partition per run (what
# ingest and model_scores want). Both are known and intended here (metarater_assets/batched.py).
_warnings.filterwarnings("ignore", message=r"Parameter `backfill_policy` of function `asset` is currently in beta")
_warnings.filterwarnings("ignore", message=r".*materializes assets with varying BackfillPolicies")
