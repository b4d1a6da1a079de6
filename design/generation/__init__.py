"""Sample -> decode -> filter -> rank: the discovery loop's steps as plain functions."""
