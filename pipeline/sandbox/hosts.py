"""The hosts of a sandbox fleet (``sandbox.hosts``): what each entry may say, and which
routes are refused. Read by the config check (``pipeline/sandbox/base.py``) and the fleet
(``pipeline/sandbox/fleet.py``); imports nothing of the sandbox package."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse


@dataclass
class HostSpec:
    url: str  # unix:///run/podman/podman.sock | ssh://user@node | tcp://node:2376 (with tls_*)
    max_concurrent: int = 8  # episodes at once on this host
    tls_ca: str = ""  # tcp://: the CA that signed the daemon's certificate
    tls_cert: str = ""  # tcp://: this client's certificate and key
    tls_key: str = ""


def host_specs(hosts: list) -> list[HostSpec]:
    """``sandbox.hosts`` entries (a URL, or a mapping of HostSpec's fields) as HostSpecs."""
    out = []
    for h in hosts:
        out.append(HostSpec(url=h) if isinstance(h, str) else HostSpec(**dict(h)))
    return out


def check_hosts(hosts: list) -> list[tuple[str, str]]:
    """Config errors of ``sandbox.hosts`` as (key, message)."""
    try:
        specs = host_specs(hosts)
    except TypeError as e:
        return [("hosts", f"each entry is a URL or a mapping of url, max_concurrent, tls_ca, tls_cert, tls_key ({e})")]
    errs = []
    for i, h in enumerate(specs):
        scheme = urlparse(h.url).scheme
        if scheme not in ("unix", "ssh", "tcp"):
            errs.append((f"hosts[{i}].url", f"must be unix://, ssh:// or tcp:// (with TLS), got {h.url!r}"))
        elif scheme == "tcp" and not (h.tls_ca and h.tls_cert and h.tls_key):
            errs.append((f"hosts[{i}].url", f"{h.url} is TCP without TLS: anyone who reaches it runs containers as "
                         "root; give tls_ca, tls_cert and tls_key, or use ssh://"))  # fmt: skip
        if h.max_concurrent < 1:
            errs.append((f"hosts[{i}].max_concurrent", f"must be ≥ 1, got {h.max_concurrent}"))
    if len({h.url for h in specs}) < len(specs):
        errs.append(("hosts", "a host is listed twice"))
    return errs


def tls_config(spec: HostSpec):
    """The docker SDK's TLS settings of a ``tcp://`` host (verified against its CA), else None."""
    if not spec.url.startswith("tcp://"):
        return None
    from docker.tls import TLSConfig

    return TLSConfig(client_cert=(spec.tls_cert, spec.tls_key), ca_cert=spec.tls_ca, verify=True)
