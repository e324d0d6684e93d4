"""Durable storage: the key-value interface, the on-disk layout and the group committer."""
