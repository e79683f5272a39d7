"""Allow ``python -m backupctl``."""

from backupctl.cli import main

main()
