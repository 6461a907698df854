"""Model update: manifest checks, download, and the update state machine."""
