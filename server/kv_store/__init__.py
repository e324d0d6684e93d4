"""The key-value store on streams, server side: the HTTP API's operations over a caller's
`ScopedStore` (`service.py`, with the folded states it keeps, `views.py`), and compaction, the
background work that keeps each store's stream bounded (`compaction.py`). The record format and
the fold are the wire library's (`s2s/kv_format.py`, `s2s/kv_state.py`), shared with the SDK;
docs/adr/0015-kv-store.md has the design."""
