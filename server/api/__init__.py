"""The gRPC face of the service: validate, convert, call the engine, convert back."""
