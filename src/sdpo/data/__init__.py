"""Dataset preparation and record schemas."""
