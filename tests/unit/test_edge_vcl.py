"""The Varnish configuration Picscale ships: rendered for an origin, it compiles."""

from __future__ import annotations

import subprocess
from pathlib import Path

from click.testing import CliRunner

from picscale.cli import main
from picscale.tiers.edge.varnish import render_vcl


def compiles(vcl: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "picscale.vcl"
    path.write_text(vcl)
    return subprocess.run(
        ["/usr/sbin/varnishd", "-C", "-j", "none", "-f", str(path), "-n", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_shipped_vcl_compiles_for_an_origin(tmp_path: Path) -> None:
    vcl = render_vcl("10.1.2.3", 8080, purgers=("127.0.0.1", "10.0.0.0/8"))
    assert '.host = "10.1.2.3";' in vcl and '.port = "8080";' in vcl
    assert '"10.0.0.0"/8;' in vcl and '"127.0.0.1";' in vcl
    assert "${" not in vcl and "$$" not in vcl  # every placeholder filled
    result = compiles(vcl, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_broken_vcl_does_not_compile(tmp_path: Path) -> None:
    """The check above can fail: varnishd -C refuses what is not VCL."""
    broken = render_vcl("127.0.0.1", 8000).replace("sub vcl_hit {", "sub vcl_hit {{")
    assert compiles(broken, tmp_path).returncode != 0


def test_the_cli_prints_it() -> None:
    result = CliRunner().invoke(main, ["edge", "vcl", "--origin", "127.0.0.1:9000"])
    assert result.exit_code == 0 and '.port = "9000";' in result.output
    bad = CliRunner().invoke(main, ["edge", "vcl", "--origin", "nowhere"])
    assert bad.exit_code == 2 and "HOST:PORT" in bad.output
