"""`teredod`: twistd, with an early SIGHUP remembered from the first instruction of ours.

systemd's ExecReload, a config-management run or an operator may send SIGHUP while the
daemon is still starting. Under plain `twistd` our first code runs only after Python
and Twisted's imports (0.1 to 0.5 s), and a SIGHUP before that ends the process. This
entry point installs the handler right after the interpreter starts (importing only
`signal`), then runs twistd unchanged: `teredod -n teredo -c FILE` takes every twistd
option. The appliance reloads once when it runs if a SIGHUP came meanwhile (earlyhup).
"""

from __future__ import annotations

from teredo_appliance import earlyhup


def main() -> None:
    earlyhup.install()
    from twisted.scripts.twistd import run

    run()
