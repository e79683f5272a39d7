"""WAL archiving: segment names and LSNs, archive keys, push, fetch, verify, epochs and timelines.

This package's ``__init__`` stays empty: the archive_command fast path imports below it."""
