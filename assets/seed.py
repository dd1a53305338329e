"""Placeholder: filled by the stage's implementation."""
