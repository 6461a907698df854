"""Datasets and synthetic data generators."""
