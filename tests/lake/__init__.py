"""Tests for projecting streams into DuckLake tables."""
