"""Helpers every stage uses: atomic files, registries, the run log, devices, the version."""
