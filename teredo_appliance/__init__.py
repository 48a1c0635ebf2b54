"""teredo-appliance: Teredo (RFC 4380, 5991, 6081) server, relay and client on Twisted."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("teredo-appliance")  # written once, in pyproject.toml
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"
