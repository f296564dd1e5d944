"""Graft widgets."""
