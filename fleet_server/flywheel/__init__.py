"""The server's side of the data flywheel: hard samples in from devices, stored safely, deduplicated."""
