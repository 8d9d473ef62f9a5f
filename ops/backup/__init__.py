"""Backups of the store, the adapter files and the effective configuration to the blob store,
with a manifest of checksums, retention, verified restore, and scheduled verification."""
