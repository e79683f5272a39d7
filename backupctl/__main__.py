"""Allow ``python -m backupctl``."""

from backupctl.console import main

main()
