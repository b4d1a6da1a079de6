"""Metrics of generated samples against reference data (one module per domain)."""
