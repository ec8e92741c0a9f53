"""Shared fixtures: broker (filled in by its area)."""
