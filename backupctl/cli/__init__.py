"""The command line: one module per verb family; parsing and rendering only, the work is in ``services``."""
