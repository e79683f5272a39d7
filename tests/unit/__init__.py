"""Pure tests: no servers, no subprocesses, no temp dirs; ``pytest tests/unit`` runs in seconds."""
