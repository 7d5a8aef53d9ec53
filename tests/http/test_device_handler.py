"""``frontend.device_handler``, which answers the device app's errors and counts its requests around the
app's own handler (not as an aiohttp middleware): a refusal aiohttp makes before the route's handler
runs, ``Expect`` it does not know (``417``), is answered and counted like any other error."""

from __future__ import annotations

import aiohttp

from tests.http.test_metrics import scrape, value


async def test_unknown_expect_is_a_json_error_and_counted(make_server):
    srv = make_server()
    srv.new_template("TMPLx", "pin=V1,type=int")
    token = srv.new_device("TMPLx")
    url = f"http://{srv.host}:{srv.port}/external/api/update?token={token}&V1=1"
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers={"Expect": "nonsense"}) as r:
            assert r.status == 417
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert await r.json() == {"error": {"message": "Expectation Failed"}}
        async with s.get(url) as r:
            assert r.status == 200
    m = await scrape(srv)
    labels = {"app": "device", "route": "/external/api/update", "method": "GET"}
    assert value(m, "blynk_http_requests_total", status="417", **labels) == 1
    assert value(m, "blynk_http_requests_total", status="200", **labels) == 1
