"""The error raised when a data set cannot be found or read."""


class DatasetError(ValueError):
    """A data set is missing, incomplete or corrupt.

    The message is a single line saying what was expected where and how to get it, so that
    an application can print it to the user without a traceback.
    """


class FormatError(ValueError):
    """A file does not follow the published format it should be in.

    Raised by the format readers with a message that says what is wrong with the file;
    the data set loaders turn it into a `DatasetError` that also says how to get a good copy.
    """
