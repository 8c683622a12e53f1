"""Output folders: lock, staging, manifest, atomic writes, paths."""
