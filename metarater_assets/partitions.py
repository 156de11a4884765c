"""The two dynamic partition sets: raw shards (one per file) and proxy runs (one per weight vector)."""
import dagster as dg

shards = dg.DynamicPartitionsDefinition(name="shards")
proxy_runs = dg.DynamicPartitionsDefinition(name="proxy_runs")
