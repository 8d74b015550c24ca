"""The `seal-trl` command: argument parsing and printing only (`main`, `train`, `evaluate`, `adapt`, `demo`)."""
