"""The provisioning CLI with no server on the data dir, in process: it takes the data dir's lock, works
on the store, and lets go; another holder of the lock makes it fail at once."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

import blynk_server
from blynk_server.cli import main
from blynk_server.control import LOCK_FILE, DataDirLock
from blynk_server.store import SqliteStore

pytestmark = pytest.mark.usefixtures("keep_umask")


@pytest.fixture
def cli(tmp_path, capsys):
    """Run ``blynk-server <args> --data-dir tmp/data`` in process: (exit code, stdout, stderr)."""
    data = tmp_path / "data"

    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--data-dir", str(data)])
        out = capsys.readouterr()
        return code, out.out, out.err

    run.data = data
    return run


def test_templates_and_devices(cli):
    code, out, _ = cli("template", "create", "--id", "TMPLu", "--name", "U", "--datastream", "pin=V1,type=int,history")
    assert code == 0 and json.loads(out)["datastreams"][0]["pin"] == "V1"
    assert cli("template", "list") == (0, "TMPLu\tU\tV1:int\n", "")
    code, _, err = cli("template", "create", "--id", "TMPLu", "--name", "again")
    assert code == 2 and err == "blynk-server: Template 'TMPLu' already exists.\n"
    code, _, err = cli("template", "create", "--id", "TMPLv", "--name", "v", "--datastream", "pin=V1,colour=red")
    assert code == 2 and "unknown datastream field(s) ['colour']" in err

    code, out, _ = cli(
        "template", "create", "--id", "TMPLm", "--name", "M", "--metafield", "id=4,name=Mode,type=switch,options=on|off"
    )
    assert code == 0 and json.loads(out)["metafields"] == [
        {"id": 4, "name": "Mode", "type": "switch", "default": None, "options": ["on", "off"], "min": None, "max": None}
    ]
    code, _, err = cli("template", "create", "--id", "TMPLn", "--name", "N", "--metafield", "id=1,name=L,type=list")
    assert code == 2 and "A list metafield needs options." in err

    code, token, _ = cli("device", "create", "--template", "TMPLu", "--name", "one")
    token = token.strip()
    assert code == 0 and len(token) == 32
    assert cli("device", "create", "--template", "TMPLx", "--name", "x")[::2] == (
        2,
        "blynk-server: no template 'TMPLx'\n",
    )
    code, _, err = cli("device", "create", "--template", "TMPLu", "--name", "x", "--token", token)
    assert code == 2 and "already exists" in err
    code, _, err = cli("device", "create", "--template", "TMPLu", "--name", "x", "--token", "bad token!")
    assert code == 2 and "8..64 characters" in err

    store = SqliteStore(cli.data)
    device = store.get_device_by_token(token)
    store.put_row(device.id, "v1", (b"7", 1000))
    store.put_row(device.id, "v2", (b"1\x002", 1000))
    store.close()
    code, out, _ = cli("device", "show", str(device.id))
    shown = json.loads(out)
    assert shown["token"] == token and shown["metadata"] == {}
    assert shown["values"] == {"V1": {"value": "7", "ts": 1000}, "V2": {"value": "1,2", "ts": 1000}}
    code, out, _ = cli("device", "list", "--json", "--template", "TMPLu")
    assert [d["token"] for d in json.loads(out)] == [token]
    assert cli("device", "delete", token)[:2] == (0, f"deleted device {device.id} (one)\n")
    assert cli("device", "show", token)[::2] == (2, f"blynk-server: no device '{token}'\n")
    assert cli("device", "list") == (0, "", "")
    assert (cli.data / LOCK_FILE).read_text() == ""  # every command let go of the lock


def test_import_checks_every_row_with_its_line(cli, tmp_path):
    cli("template", "create", "--id", "TMPLi", "--name", "I")
    tokens = [f"importtoken{i:02d}" for i in range(3)]
    good = tmp_path / "good.csv"
    good.write_text("token,name,template\n# a comment\n" + "".join(f"{t},n{i},TMPLi\n" for i, t in enumerate(tokens)))
    assert cli("device", "import", str(good))[:2] == (0, "imported 3 devices\n")
    cases = {
        f"{tokens[0]},again,TMPLi\n": "bad.csv:1: token importtoken00 already exists",
        "freshtoken01,x,TMPLi\nfreshtoken01,y,TMPLi\n": "bad.csv:2: token freshtoken01 already exists",
        "short,x,TMPLi\n": "bad.csv:1: A token is 8..64 characters",
        "freshtoken02,x,TMPLnone\n": "bad.csv:1: no template 'TMPLnone'",
        "freshtoken03,x\n": "bad.csv:1: no template (add a third column or --template)",
    }
    bad = tmp_path / "bad.csv"
    for text, message in cases.items():
        bad.write_text(text)
        code, _, err = cli("device", "import", str(bad))
        assert code == 2 and message in err, err
    code, _, err = cli("device", "import", str(tmp_path / "missing.csv"))
    assert code == 2 and "cannot read" in err
    bad.write_text("freshtoken04,x\n")
    assert cli("device", "import", str(bad), "--template", "TMPLi")[:2] == (0, "imported 1 devices\n")
    assert len(cli("device", "list")[1].splitlines()) == 4


def test_a_held_lock_fails_the_command_at_once(cli):
    cli("template", "list")  # creates the data dir
    with DataDirLock(cli.data, role="cli"):
        code, out, err = cli("device", "list")
    assert (code, out) == (2, "")
    assert err == (
        f"blynk-server: another blynk-server command (pid {os.getpid()}) is working on {cli.data};"
        " run this one when it is done\n"
    )
    assert cli("device", "list")[0] == 0


def test_actions_are_required(capsys):
    assert main(["template"]) == 2
    assert capsys.readouterr().err == "blynk-server: template needs an action: create, list\n"
    assert main(["device"]) == 2 and main(["ota"]) == 2
    assert "ota needs an action" in capsys.readouterr().err


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_ota_cli_and_the_shared_module_do_not_import_the_cli():
    root = Path(blynk_server.__file__).parent
    for path in (root / "ota" / "cli.py", root / "cli_common.py", root / "control.py"):
        assert "blynk_server.cli" not in _imports(path), path


def test_data_dir_before_the_sub_command(tmp_path, capsys):
    """``blynk-server --data-dir D template list`` names the same data dir as ``… template list --data-dir D``."""
    data = str(tmp_path / "elsewhere")
    assert main(["--data-dir", data, "template", "create", "--id", "TMPLb", "--name", "B"]) == 0
    capsys.readouterr()
    assert main(["template", "list", "--data-dir", data]) == 0
    assert capsys.readouterr().out == "TMPLb\tB\t\n"
