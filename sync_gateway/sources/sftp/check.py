"""The doctor's checks of one ``ssh://`` root (``sync-gateway doctor``), with the very options a pass
uses: ``SshOptions.from_settings(settings)`` builds them for both."""
from __future__ import annotations

import dataclasses
from typing import Any, List, NamedTuple, Optional

import paramiko

from sync_gateway.errors import GatewayError, SshAuthError, SshConfigError, SshHostKeyError, SshUnreachableError
from sync_gateway.sources.sftp._ssh import SshHop, SshOptions, open_connection, parse_ssh_url, resolve_hops

__all__ = ["SshCheck", "check_ssh_root"]


class SshCheck(NamedTuple):
    name: str       # "config", "reachable", "host key", "auth", "path"
    ok: bool
    message: str


def check_ssh_root(root_url: str, options: Optional[SshOptions] = None, **fields: Any) -> List[SshCheck]:
    """The doctor's checks of one SSH root, in order; the list ends at the first failure.

    ``options``: how to connect, as the gateway's sync does (``SshOptions.from_settings(settings)``);
    ``fields`` replace some of them (``known_hosts=...``). One entry per hop for reachable / host key / auth
    (a ProxyJump chain shows the bastion first), then one for the path. Never raises for a problem it can
    name."""
    checks: List[SshCheck] = []
    try:
        options = dataclasses.replace(options or SshOptions(), **fields)
        user, host, port, path = parse_ssh_url(root_url)
        hops = resolve_hops(host, user, port, options)
    except GatewayError as err:
        return [SshCheck("config", False, str(err))]
    route = " -> ".join(h.label for h in hops)
    checks.append(SshCheck("config", True, f"{root_url}: {route}"))

    def on_step(name: str, hop: SshHop, message: str) -> None:
        checks.append(SshCheck(name, True, message))

    try:
        conn = open_connection(root_url, hops, options, on_step)
    except SshHostKeyError as err:
        return checks + [SshCheck("host key", False, str(err))]
    except (SshAuthError, SshConfigError) as err:  # a named identity file that is missing: an auth problem
        return checks + [SshCheck("auth", False, str(err))]
    except SshUnreachableError as err:
        return checks + [SshCheck("reachable", False, str(err))]
    sftp = conn.sftp
    assert sftp is not None  # open_connection raises when the SFTP subsystem did not start
    try:
        real = sftp.normalize(path)
        count = len(sftp.listdir(real))
        checks.append(SshCheck("path", True, f"{real} is readable ({count} entries)"))
    except OSError as err:
        checks.append(SshCheck("path", False, f"{path} on {hops[-1].label} is not readable ({err}): check the "
                                              f"path in the root URL and the permissions of {hops[-1].user}"))
    except (EOFError, paramiko.SSHException) as err:
        checks.append(SshCheck("path", False, f"the connection dropped while listing {path} ({err})"))
    finally:
        conn.close()
    return checks
