"""Shared fixtures: bundles (filled in by its area)."""
