"""Iterated tuning from a champion: sweeps, the promotion gate's lineage record (kept light to import)."""
