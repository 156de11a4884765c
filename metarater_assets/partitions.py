"""The dynamic partition sets: raw shards (one per file), proxy runs (one per weight vector) and
tier-2 confirmation runs (one per vector confirmed with the larger proxy kind) and orientation runs
(a score's top and bottom, for `scores.orientation: auto`)."""
import dagster as dg

shards = dg.DynamicPartitionsDefinition(name="shards")
proxy_runs = dg.DynamicPartitionsDefinition(name="proxy_runs")
confirm_runs = dg.DynamicPartitionsDefinition(name="confirm_runs")
orientation_runs = dg.DynamicPartitionsDefinition(name="orientation_runs")
