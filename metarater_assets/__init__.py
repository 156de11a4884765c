"""metarater: the Meta-rater data-selection method as a Dagster asset graph."""
__version__ = "0.1.0"
