"""The lecture experiments: one module per idea (see common.py)."""
