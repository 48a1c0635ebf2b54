"""BIRD 2 configurations for the anycast lab (see etc/bird-box.conf, etc/bird-upstream.conf).

Pure text: each box announces what the appliance owns in the kernel (the relay's route,
matched on its protocol number; the server /32s on the server's anycast TUN, through `direct`) and keeps an
unannounced guard route; the upstream installs every path (ECMP) and detects a silent box
with BFD.
"""

from __future__ import annotations

from teredo_appliance.config_model import ServerConfig

UPSTREAM_AS = 65000
BOX_AS = 65002
ROUTE_PROTOCOL = 201  # roles.relay.route_protocol on the lab's boxes
GUARD_METRIC = 4000000000  # the guard route loses to the relay's own route
# Fast sessions: BFD finds a silent box in 0.3 s, BGP gives up after 3 s without it, and
# a restarted box is peered again within about a second.
TIMERS = """    hold time 3;
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 2;
    bfd on;
"""
BFD = """protocol bfd {
    interface "*" { interval 100 ms; multiplier 3; };
}
"""


def box_conf(router_id: str, neighbor4: str, neighbor6: str, anycast: tuple[str, ...]) -> str:
    """A box: learn the relay's route, export it and the anycast /32s to the upstream."""
    nets = ", ".join(f"{a}/32" for a in anycast)
    return f"""router id {router_id};
protocol device {{ }}
protocol static guard {{
    ipv6 {{ export none; }};
    route 2001::/32 unreachable {{ preference = 1; krt_metric = {GUARD_METRIC}; }};
}}
protocol kernel kernel6 {{
    learn;
    ipv6 {{
        import where net = 2001::/32 && krt_source = {ROUTE_PROTOCOL};
        export where proto = "guard";
    }};
}}
protocol direct anycast {{
    ipv4 {{ import where net ~ [ {nets} ]; }};
    interface "{ServerConfig.anycast_interface}";
}}
{BFD}template bgp upstream {{
    local as {BOX_AS};
    neighbor as {UPSTREAM_AS};
{TIMERS}}}
protocol bgp up4 from upstream {{
    neighbor {neighbor4};
    ipv4 {{ import none; export where proto = "anycast"; }};
}}
protocol bgp up6 from upstream {{
    neighbor {neighbor6};
    ipv6 {{ import none; export where proto = "kernel6"; }};
}}
"""


def upstream_conf(router_id: str, boxes: list[tuple[str, str, str]]) -> str:
    """The upstream: (name, IPv4, IPv6) per box; every path into the kernel."""
    sessions = "".join(
        f"protocol bgp {name}_4 from box {{ neighbor {v4} as {BOX_AS}; ipv4 {{ import all; export none; }}; }}\n"
        f"protocol bgp {name}_6 from box {{ neighbor {v6} as {BOX_AS}; ipv6 {{ import all; export none; }}; }}\n"
        for name, v4, v6 in boxes
    )
    return f"""router id {router_id};
protocol device {{ }}
protocol kernel kernel4 {{
    merge paths on;
    ipv4 {{ export all; }};
}}
protocol kernel kernel6 {{
    merge paths on;
    ipv6 {{ export all; }};
}}
{BFD}template bgp box {{
    local as {UPSTREAM_AS};
{TIMERS}}}
{sessions}"""
