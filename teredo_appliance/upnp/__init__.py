"""A UPnP IGD client (RFC 6081 §5.3: the UPnP-Enabled Symmetric NAT Extension needs a mapping).

`messages` holds the pure SSDP and SOAP texts, `lease` when to renew or retry, and
`client` the Twisted I/O: discovery, the SOAP calls, and a service keeping one mapping.
"""
