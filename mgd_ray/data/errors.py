"""The one exception type of the data layer."""


class DataError(ValueError):
    """A data source cannot be used as configured. The message says what, where and how to fix it."""
