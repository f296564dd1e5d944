"""Graft resources."""
