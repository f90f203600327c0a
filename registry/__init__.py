"""The MLFS registry: definitions stored in the Feast registry, lookups and lineage."""
