from backupctl.cli_ops import register as _register_ops  # noqa: E402 - needs the group defined above

_register_ops(cli)
