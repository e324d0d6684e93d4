"""The lake: materializations that project streams of JSON records into DuckLake tables, the
`/v2/stream` ingest path, and read-only SQL over the result."""
