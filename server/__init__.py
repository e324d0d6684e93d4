"""The s2s server: storage engine, sequencer, control plane, readers and background jobs."""
