"""The download URL with its secret works for the PyPI client library (blynklib hands ``ota`` to an
``internal_ota`` handler) fetched with a plain HTTP client, and for Node's URL parser and http.get."""

from __future__ import annotations

import shutil
import subprocess
import threading
import urllib.request

import blynklib
import pytest

from .conftest import image, new_device, ship, upload

NODE_GET = """
const http = require('http'), crypto = require('crypto');
http.get(new URL(process.argv[1]), (res) => {
  const md5 = crypto.createHash('md5');
  res.on('data', (c) => md5.update(c));
  res.on('end', () => console.log(res.statusCode, res.headers['content-length'], md5.digest('hex')));
});
"""


def _url_via_blynklib(srv, token: str, timeout: float = 10.0) -> str:
    """Log in with blynklib and return the URL its ``internal_ota`` handler gets."""
    blynk = blynklib.Blynk(token, server=srv.host, port=srv.port, heartbeat=10)
    got: list[str] = []
    done = threading.Event()

    @blynk.handle_event("internal_ota")
    def on_ota(*args):
        got.append(str(args[0][0] if isinstance(args[0], list) else args[0]))
        done.set()

    def loop() -> None:
        while not done.is_set():
            blynk.run()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        assert done.wait(timeout), "no ota command reached blynklib"
    finally:
        done.set()
        thread.join(timeout)
        blynk.disconnect()
    return got[0]


def test_python_client_gets_a_working_url(ota_server, tmp_path, unique):
    srv = ota_server
    srv.new_template(unique)
    data = image("9.0.0", unique, seed=31)
    fw = upload(srv, tmp_path, data)
    _, token = new_device(srv, unique, "py")
    sid = ship(srv, f"py-{unique}", fw["id"], unique)["id"]
    url = _url_via_blynklib(srv, token)
    assert f"/static/fw_{sid}_" in url and url.endswith(f".bin?token={token}")
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200 and r.read() == data and r.headers["x-MD5"] == fw["md5"]

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    out = subprocess.run([node, "-e", NODE_GET, url], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.split() == ["200", str(len(data)), fw["md5"]]
