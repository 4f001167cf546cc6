"""`imagegate selftest` opens https:// URLs only (bandit B310: no file: or custom scheme)."""

from __future__ import annotations

import io

import pytest

from imagegate.commands import selftest


@pytest.mark.parametrize("url", ["file:///etc/passwd", "http://imagegate:8443", "ftp://x/"])
def test_a_url_that_is_not_https_is_refused_before_anything_is_opened(url: str) -> None:
    out = io.StringIO()
    assert selftest.run(url, ca_file=None, out=out) == 2
    assert "is not an https:// URL" in out.getvalue()
