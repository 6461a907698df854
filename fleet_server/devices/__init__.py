"""Devices: enrollment, desired state and what they report."""
