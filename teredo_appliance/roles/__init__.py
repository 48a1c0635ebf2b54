"""The roles: per role a sans-I/O machine and the thin Twisted service around it.

The machines' contract: each is fed one input with the time it arrived (`from_udp`,
`from_tun`, `receive`, `resolved`, ... with `now`), never reads a clock, a socket or a
logger, and acts through callables its service injects (send a datagram, write to the
TUN, resolve a name, log an event); a machine with timers says when it next wants to be
woken (`next_deadline()`) and is woken with `on_timer(now)`. The server, which has no
timer and one answer per datagram at most, returns that answer from `handle()` instead
(its hot path); the relay also returns its next wake-up from each input, sparing a
`next_deadline()` call per packet. Addresses at the machines' boundary are IPv4 as int
and ports as int, except the peer tables' (host, port) mappings of the relay and the
client's data path. tests/test_imports.py checks that no machine imports Twisted.
"""
