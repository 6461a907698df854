"""Server jobs: training, compiling and dataset synthesis run as worker processes with progress in the DB."""
