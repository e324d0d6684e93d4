"""Tests of the key-value store on streams (docs/adr/0015-kv-store.md)."""
