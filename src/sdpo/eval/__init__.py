"""Evaluation: checkpoint win rates."""
