"""The one exception type masksmith raises for problems a user can fix."""


class MasksmithError(Exception):
    """A user-facing error: one line that names the file (when there is one) and what is wrong."""


class DataError(MasksmithError):
    """Bad or inconsistent input data (images, masks, folders, class lists)."""


class ConfigError(MasksmithError):
    """An invalid option or configuration value."""


class BundleError(MasksmithError):
    """A model bundle that cannot be read: corrupt, truncated, foreign or from an incompatible version."""
