"""Feedback sources: personas and user simulators."""
