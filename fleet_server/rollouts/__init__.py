"""Staged rollouts: selectors, waves, behaviour gates, the engine that advances them, the audit log."""
