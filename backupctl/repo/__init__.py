"""The repository: its marker, catalog of manifests, streaming pipeline, codecs, encryption, leases and pins."""
