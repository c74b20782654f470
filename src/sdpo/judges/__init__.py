"""Pairwise style judges and win-rate statistics."""
