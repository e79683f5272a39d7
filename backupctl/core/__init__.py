"""The foundation every layer may import: errors and exit codes, the config schema, logs, signals, the OS user."""
