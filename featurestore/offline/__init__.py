"""The offline store: partitioned Parquet history of every view."""
