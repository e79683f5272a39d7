"""The repository's key layout: the one module that spells a key.

The layout is the product's most durable contract: a repository written today must be read by every
later version, from any host. Every other module asks this one for a key (or a prefix to list) and never
joins path parts itself, so a reader can see the whole layout here, and a change to it is one diff.

Keys are ``/``-separated and relative to the repository root (the storage driver adds its own prefix).
"""

from __future__ import annotations

# -- The repository and its sources -------------------------------------------------------------------

# -- Backups and their manifests -----------------------------------------------------------------------

# -- Leases, pins and the store's clock ---------------------------------------------------------------

# -- The WAL archive: segments, history files, epochs and timelines -----------------------------------
