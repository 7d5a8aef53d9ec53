"""Issue 14's first promise, end to end with real parts: a device's ``logEvent("overheat")`` on a
template that declares it reaches a real SMTP inbox (aiosmtpd) and a real webhook receiver (aiohttp),
both naming the device and neither holding its token; an undeclared code is refused (status 2)."""

from __future__ import annotations

import json

from blynk_server.devclient import DeviceClient
from protocol import Command, Status
from protocol.body import join_fields

from .conftest import running
from .test_mail import smtp_server
from .test_webhooks import Receiver, admin_call

WAIT = 10.0  # a bound against a hang; both arrive at once when delivery works


async def test_declared_event_reaches_the_inbox_and_the_webhook_undeclared_is_refused(tmp_path):
    receiver = await Receiver().start()
    try:
        async with (
            smtp_server() as (smtp_port, inbox),
            running(tmp_path / "data", smtp_host="127.0.0.1", smtp_port=smtp_port, smtp_starttls=False) as srv,
        ):
            tpl = await srv.provisioning.create_template("Boilers", [])
            record = await srv.provisioning.create_device(tpl.id, "Boiler East")
            status, _ = await admin_call(
                srv,
                "POST",
                f"/api/templates/{tpl.id}/events",
                {"code": "overheat", "name": "Overheat", "level": "critical", "emails": ["ops@example.com"]},
            )
            assert status == 201
            body = '{"device": "{device_name}", "event": "{event_code}", "text": "{event_description}"}'
            status, hook = await admin_call(
                srv,
                "POST",
                "/api/webhooks",
                {"name": "alarm", "url": receiver.url + "/alarm", "on": f"event:{tpl.id}:overheat", "body": body},
            )
            assert status == 201, hook
            host, port = srv.hardware.address
            device = await DeviceClient.connect(host, port, record.token)
            try:
                ok = await device.request(Command.EVENT_LOG, join_fields("overheat", "97 C"))
                assert ok[2] == Status.SUCCESS
                refused = await device.request(Command.EVENT_LOG, join_fields("meltdown", "!"))
                assert refused[2] == Status.ILLEGAL_COMMAND
            finally:
                await device.close()

            _, rcpts, mail = await inbox.next()
            await receiver.wait_for(1)
            assert rcpts == ["ops@example.com"]
            text = mail["Subject"] + mail.get_body(("plain",)).get_content()
            assert "Boiler East" in text and "Overheat" in text and "97 C" in text and record.token not in text
            method, path, _, raw = receiver.got[0]
            assert (method, path) == ("POST", "/alarm")
            assert json.loads(raw) == {"device": "Boiler East", "event": "overheat", "text": "97 C"}
            assert record.token.encode() not in raw
            assert inbox.messages.empty() and len(receiver.got) == 1  # nothing for the refused code
    finally:
        await receiver.stop()
