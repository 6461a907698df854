"""HTTP API routes, one file per resource."""
