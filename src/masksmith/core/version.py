"""masksmith's version, recorded in bundles, reports and run configs."""

__version__ = "0.1.0"
