"""The README's journeys, run as written."""
