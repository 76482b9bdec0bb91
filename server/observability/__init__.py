"""Metrics (`metrics`), structured logs (`logs`) and the RPC interceptor feeding both
(`interceptor`). Imported by module, so that `logs` stays light for the CLI."""
