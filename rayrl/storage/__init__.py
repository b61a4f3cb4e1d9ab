"""Storage: run folders and checkpoints on a local path or any ``pyarrow.fs`` URI, atomic local writes,
archive and restore of whole runs."""
