"""The dynamic partition sets: raw shards (one per file), proxy runs (one per weight vector) and
tier-2 confirmation runs (one per vector confirmed with the larger proxy kind)."""
import dagster as dg

shards = dg.DynamicPartitionsDefinition(name="shards")
proxy_runs = dg.DynamicPartitionsDefinition(name="proxy_runs")
confirm_runs = dg.DynamicPartitionsDefinition(name="confirm_runs")
