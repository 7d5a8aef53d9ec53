"""``blynk-server provision …``: dynamic provisioning from the command line, through the running
server's admin API or, when none runs, on the store under the data dir's lock (the same
``DeviceProvisioning`` service).

``provision device`` is what the Blynk app does for an Edgent device in its access-point (config) mode:
read ``/board_info.json``, get a provision token for the board's template, and send the token, this
server's address and the Wi-Fi credentials to the device's ``/config``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.error
import urllib.request
from urllib.parse import quote, urlencode, urlsplit

from blynk_server.cli_common import CliError, Local, Remote, add_common, open_data_dir
from blynk_server.device_provisioning import DeviceProvisioning
from blynk_server.provisioning import Provisioning

ACTIONS = ("allow", "token", "reprovision", "pending", "claim", "device")
DEVICE_URL = "http://192.168.4.1"  # Edgent's access point address (WIFI_AP_IP)
MAX_DEVICE_ANSWER = 4096  # bytes read of an answer from the device (board_info.json is < 512)
MAX_TEMPLATE_ID = 64


def add_parser(sub) -> None:
    prov = sub.add_parser("provision", help="dynamic provisioning: provision tokens, Edgent devices, claims")
    actions = prov.add_subparsers(dest="action")
    p = actions.add_parser("allow", help="allow (or with --off stop) dynamic provisioning on a template")
    add_common(p)
    p.add_argument("template")
    p.add_argument("--off", action="store_true", help="stop issuing tokens for it")
    p = actions.add_parser("token", help="issue a provision token: creates a device that waits for its login")
    add_common(p)
    p.add_argument("--template", required=True)
    p.add_argument("--name", help="device name (default: the template's name)")
    p = actions.add_parser("reprovision", help="a new token for an existing device (keeps its id and data)")
    add_common(p)
    p.add_argument("device", help="device id or token")
    p = actions.add_parser("pending", help="provision tokens not used yet")
    add_common(p)
    p.add_argument("--template")
    p.add_argument("--json", action="store_true")
    p = actions.add_parser("claim", help="record the owner of an activated device and/or rename it")
    add_common(p)
    p.add_argument("device", help="device id or token")
    p.add_argument("--name", help="new device name")
    p.add_argument("--owner", help="who owns it (free text, e.g. an e-mail address)")
    p = actions.add_parser(
        "device",
        help="provision an Edgent device in its access-point mode (what the Blynk app does)",
        description='Join the device\'s Wi-Fi access point first ("Blynk <Template>-XXXX"), then run this.',
    )
    add_common(p)
    p.add_argument("url", nargs="?", default=DEVICE_URL, help=f"the device's address (default {DEVICE_URL})")
    p.add_argument("--ssid", required=True, help="the Wi-Fi network the device should join")
    p.add_argument("--pass", dest="wifi_pass", default="", help="its password (none for an open network)")
    p.add_argument("--server-host", help="this server's address as the device reaches it (default: --external-url's)")
    p.add_argument("--server-port", type=int, help="the device port as the device reaches it (default: --port's)")
    p.add_argument("--name", help="device name (default: the template's name)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for each request to the device")


class DirectProvisioning:
    """No server runs: the service on the store under this command's lock."""

    def __init__(self, local: Local) -> None:
        domain = local.domain()
        self.local = local
        self.service = DeviceProvisioning(Provisioning(local.store, domain), local.settings)
        asyncio.run(self.service.load())

    def device_id(self, ref: str) -> int:
        return Local.device(self.service.domain, ref).id

    def allow(self, tid: str, allowed: bool) -> dict:
        return asyncio.run(self.service.set_allowed(tid, allowed))

    def token(self, tid: str, name: str | None) -> dict:
        return asyncio.run(self.service.issue_provision_token(tid, name)).as_dict()

    def reprovision(self, device_id: int) -> dict:
        return asyncio.run(self.service.issue_reprovision_token(device_id)).as_dict()

    def pending(self, tid: str | None) -> list[dict]:
        if tid is not None:
            self.service.provisioning.template(tid)
        return self.service.pending_tokens(tid)

    def claim(self, device_id: int, name: str | None, owner: str | None) -> dict:
        return asyncio.run(self.service.claim(device_id, name, owner))


class ProvisioningViaServer:
    """A server runs: its provisioning routes over the control socket."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def device_id(self, ref: str) -> int:
        return int(self.remote.device(ref)["id"])

    def allow(self, tid: str, allowed: bool) -> dict:
        return self.remote.call("PUT", _template_path(tid), {"allowed": allowed}, not_found=f"no template {tid!r}")[1]

    def token(self, tid: str, name: str | None) -> dict:
        body = {"template_id": tid} | ({"name": name} if name else {})
        return self.remote.call("POST", "/api/provision/token", body, not_found=f"no template {tid!r}")[1]

    def reprovision(self, device_id: int) -> dict:
        return self.remote.call("POST", f"/api/devices/{device_id}/provision/token")[1]

    def pending(self, tid: str | None) -> list[dict]:
        query = "?" + urlencode({"template_id": tid}) if tid is not None else ""
        return self.remote.call("GET", "/api/provision/pending" + query, not_found=f"no template {tid!r}")[1]

    def claim(self, device_id: int, name: str | None, owner: str | None) -> dict:
        body = {k: v for k, v in (("name", name), ("owner", owner)) if v is not None}
        return self.remote.call("POST", f"/api/devices/{device_id}/claim", body)[1]


def _template_path(tid: str) -> str:
    return "/api/templates/" + quote(tid, safe="") + "/provisioning"


def _service(target: Local | Remote) -> DirectProvisioning | ProvisioningViaServer:
    return DirectProvisioning(target) if isinstance(target, Local) else ProvisioningViaServer(target)


# --- the app's side of the Edgent flow --------------------------------------------------------------


def _device_get(url: str, timeout: float) -> tuple[int, object]:
    """``(status, JSON body)`` of a GET to the device; at most ``MAX_DEVICE_ANSWER`` bytes read, no
    redirects followed (a device in config mode answers itself)."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url), timeout=timeout) as resp:
            status, raw = resp.status, resp.read(MAX_DEVICE_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(MAX_DEVICE_ANSWER + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach the device at {_origin(url)}: {getattr(exc, 'reason', exc)}") from None
    except ValueError:  # http.client's refusals quote the URL, which holds the token: not repeated
        raise CliError(f"not a usable device address: {_origin(url)}") from None
    if len(raw) > MAX_DEVICE_ANSWER:
        raise CliError(f"the device's answer is larger than {MAX_DEVICE_ANSWER} bytes")
    try:
        return status, json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return status, None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def read_board_info(base: str, timeout: float) -> dict:
    """The device's ``/board_info.json`` (Edgent: ``{board, tmpl_id, fw_type, fw_ver, ssid, bssid, mac,
    last_error, …}``), checked for a template id."""
    status, info = _device_get(base + "/board_info.json", timeout)
    if status != 200 or not isinstance(info, dict):
        raise CliError(f"the device answered {status} without board info: is it in config mode?")
    tid = info.get("tmpl_id")
    if not isinstance(tid, str) or not 1 <= len(tid) <= MAX_TEMPLATE_ID or not tid.isprintable():
        raise CliError("the device's board info names no template (tmpl_id)")
    return info


def configure_device(base: str, token: str, host: str, port: int, ssid: str, password: str, timeout: float) -> dict:
    """Send the device its token, this server and the Wi-Fi network (Edgent's ``/config``)."""
    query = urlencode(
        {
            "ssid": ssid,
            "pass": password,
            "blynk": token,  # the name Edgent's ConfigMode reads
            "auth": token,
            "host": host,
            "port": port,
            "port_ssl": port,  # Edgent's name for the port it connects to
        }
    )
    status, answer = _device_get(f"{base}/config?{query}", timeout)
    if status != 200 or not isinstance(answer, dict) or answer.get("status") != "ok":
        msg = answer.get("msg") if isinstance(answer, dict) else None
        raise CliError(f"the device refused the configuration ({status}): {msg or 'no answer'}")
    return answer


def _server_address(args: argparse.Namespace, settings) -> tuple[str, int]:
    host = args.server_host
    if host is None and settings.external_url:
        host = urlsplit(settings.external_url).hostname
    if not host:
        raise CliError("--server-host is needed: the address the device reaches this server at")
    port = args.server_port if args.server_port is not None else settings.port
    if not 1 <= port <= 65535:
        raise CliError("--server-port must be 1..65535")
    return host, port


def _provision_device(args: argparse.Namespace) -> None:
    base = args.url.rstrip("/")
    if urlsplit(base).scheme not in ("http", "https"):
        raise CliError("the device's address is an http:// URL")
    if not 1 <= len(args.ssid) <= 32:
        raise CliError("--ssid is 1..32 characters")
    if len(args.wifi_pass) > 64:
        raise CliError("--pass is at most 64 characters")
    board = read_board_info(base, args.timeout)
    with open_data_dir(args) as target:
        host, port = _server_address(args, target.settings)
        issued = _service(target).token(board["tmpl_id"], args.name)
    configure_device(base, issued["token"], host, port, args.ssid, args.wifi_pass, args.timeout)
    print(
        f"device {issued['deviceId']} (template {issued['template_id']}) got its token; it is activated when it"
        f" logs in to {host}:{port} through {args.ssid!r}"
    )


def cmd_provision(args: argparse.Namespace) -> int:
    if args.action not in ACTIONS:
        raise CliError("provision needs an action: " + ", ".join(ACTIONS))
    if args.action == "device":
        _provision_device(args)
        return 0
    with open_data_dir(args) as target:
        svc = _service(target)
        if args.action == "allow":
            print(json.dumps(svc.allow(args.template, not args.off), indent=2))
        elif args.action == "token":
            print(json.dumps(svc.token(args.template, args.name), indent=2))
        elif args.action == "reprovision":
            print(json.dumps(svc.reprovision(svc.device_id(args.device)), indent=2))
        elif args.action == "pending":
            found = svc.pending(args.template)
            if args.json:
                print(json.dumps(found, indent=2))
            for p in [] if args.json else found:
                state = "EXPIRED" if p["expired"] else "pending"
                print(f"{p['device_id']}\t{p['template_id']}\t{p['kind']}\t{state}\texpires_at={p['expires_at']}")
        else:
            print(json.dumps(svc.claim(svc.device_id(args.device), args.name, args.owner), indent=2))
    return 0


__all__ = ["add_parser", "cmd_provision", "configure_device", "read_board_info"]
