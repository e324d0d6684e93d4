"""The gRPC frontend: AccountService, BasinService and StreamService over the `StreamStore`."""
