"""Graft app."""
