"""The model registry: versions, artifacts and signed manifests."""
