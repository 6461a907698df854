"""`edgeloop`: the fleet server and the admin command line."""
