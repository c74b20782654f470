"""Trainers: offline (logged interactions)."""
