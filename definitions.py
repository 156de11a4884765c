"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here."""
from metarater_assets.defs import build_definitions
from resources import Settings

_settings = Settings.from_env()
_settings.ensure_dagster_home()
defs = build_definitions(_settings)
