"""The lab's one exception, apart from lab.py so that the helpers lab.py uses can raise it."""


class LabError(Exception):
    """The lab could not be built or a daemon did not come up; the message says why."""
