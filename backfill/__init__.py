"""Backfills: running views over history and writing the offline and online stores."""
