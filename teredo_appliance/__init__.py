"""teredo-appliance: Teredo (RFC 4380, 5991, 6081) server, relay and client on Twisted."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """`__version__`, looked up only when asked: `teredod` imports this package before
    anything else and must reach its SIGHUP handler without scanning site-packages."""
    if name != "__version__":
        raise AttributeError(name)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("teredo-appliance")  # written once, in pyproject.toml
    except PackageNotFoundError:  # a checkout on sys.path that was never installed
        return "0+unknown"
