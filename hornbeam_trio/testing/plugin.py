"""pytest plugin (entry point ``hornbeam_trio``): ready-made fixtures."""
