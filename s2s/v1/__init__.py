"""Generated from proto/s2s/v1 by `make proto`. Never edit by hand."""
