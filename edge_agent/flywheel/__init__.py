"""Hard samples on the device: miners pick frames worth labelling, a near-duplicate filter drops scenes
already sent, a crash-safe spool keeps them through outages, an uploader sends each at least once."""
