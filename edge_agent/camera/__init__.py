"""Frame sources (one capture thread each, newest frame only) and the inference loop."""
