"""The s2s Python client SDK (gRPC); arrives with the gRPC API."""
