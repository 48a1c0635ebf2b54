"""teredo-appliance: Teredo (RFC 4380, 5991, 6081) server, relay and client on Twisted."""

__version__ = "0.1.0"
