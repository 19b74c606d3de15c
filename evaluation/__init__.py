"""Aggregation of tune runs into best configurations, multi-seed re-runs and Arrow tables."""
