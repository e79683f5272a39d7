"""PostgreSQL itself: binaries and scratch clusters, connections, client tools, backup_manifest, tar streams."""
