"""s2s: the wire library shared by the s2s server and client.

Generated protobuf code lives in `s2s.v1` (never edited by hand); this package adds what both
sides need on top of it: error codes, name rules, config shapes and record validation.
"""
