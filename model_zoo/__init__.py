"""Datasets, model definitions, training, export and evaluation. Imports edge_agent, never fleet_server."""
