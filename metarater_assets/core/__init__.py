"""The science of metarater: plain Python, numpy, pyarrow, torch, sklearn. Never imports dagster."""
