"""The Varnish configuration Picscale ships, rendered for one origin."""

from __future__ import annotations

from importlib import resources
from string import Template


def render_vcl(
    origin_host: str,
    origin_port: int,
    *,
    purgers: tuple[str, ...] = ("127.0.0.1", "::1"),
    probe_interval_seconds: float = 1.0,
    revalidate_grace_seconds: int = 10,
    media_grace_hours: int = 24,
) -> str:
    """The VCL of ``varnish.vcl`` for an origin at ``origin_host:origin_port``; PURGE is
    accepted from the addresses (or networks, ``10.0.0.0/8``) in ``purgers`` only."""
    text = resources.files("picscale.tiers.edge").joinpath("varnish.vcl").read_text()
    acl = "\n".join(f'    "{_acl_entry(p)[0]}"{_acl_entry(p)[1]};' for p in purgers)
    return Template(text).substitute(
        origin_host=origin_host,
        origin_port=origin_port,
        purgers=acl,
        probe_interval=f"{probe_interval_seconds:g}s",
        revalidate_grace=f"{revalidate_grace_seconds}s",
        media_grace=f"{media_grace_hours}h",
    )


def _acl_entry(entry: str) -> tuple[str, str]:
    address, _, bits = entry.partition("/")
    return address, f"/{int(bits)}" if bits else ""
