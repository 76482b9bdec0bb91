"""Metrics (`metrics`), structured logs (`logs`) and the RPC observer feeding both
(`rpc_observer`). Imported by module, so that `logs` stays light for the CLI."""
