"""Usage accounting: what the server's paths report once per batch or operation
(`accounting.Usage`), kept for the S2 metrics API (`counters`, `storage`, `query`,
`metric_sets`) and for Prometheus (`prometheus`), persisted in the `USAGE` table (`layout`).

ADR 0008 (docs/adr/0008-metrics.md) gives the choices and their measurements.
"""
