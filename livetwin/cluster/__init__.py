"""Cluster mode: the fleet sharded by twin id over Ray actors, everything durable in PostgreSQL
(docs/cluster.md)."""
