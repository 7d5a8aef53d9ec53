"""``blynk-server automation …`` with no server running: the command takes the data dir's lock and runs
the same service on the store (the same checks and stored form as through the admin API)."""

from __future__ import annotations

import json

import pytest

from blynk_server.cli import main

pytestmark = pytest.mark.usefixtures("keep_umask")


@pytest.fixture
def data(tmp_path, capsys):
    d = str(tmp_path / "data")
    assert main(["template", "create", "--data-dir", d, "--id", "TMPLg", "--name", "G",
                 "--datastream", "pin=V1,name=T,type=double", "--datastream", "pin=V2,name=P,type=int,min=0,max=1"]) == 0  # fmt: skip
    assert main(["event", "create", "--data-dir", d, "--template", "TMPLg", "--code", "wake", "--name", "Wake"]) == 0
    assert main(["device", "create", "--data-dir", d, "--template", "TMPLg", "--name", "A"]) == 0
    token = capsys.readouterr().out.split()[-1]
    return d, token


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_create_list_show_delete_without_a_server(data, capsys):
    d, token = data
    code, out, err = run(
        capsys, "automation", "create", "--data-dir", d, "--name", "hot",
        "--when", f"{token}:V1 > 30", "--do", f"write:{token}:V2=1", "--do", "email:ops@example.com",
    )  # fmt: skip
    assert code == 0, err
    made = json.loads(out)
    assert made["when"] == "device:1:V1 > 30" and made["do"] == ["write:1:V2=1", "email:ops@example.com"]
    assert token not in out
    code, out, err = run(
        capsys, "automation", "create", "--data-dir", d, "--name", "morning",
        "--cron", "0 7 * * 1-5", "--tz", "Europe/Berlin", "--do", "event:1:wake",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["next_run"].endswith(":00:00.000Z")

    code, out, _ = run(capsys, "automation", "list", "--data-dir", d)
    assert out.splitlines() == [
        "hot\tdevice:1:V1 > 30\t-> write:1:V2=1; email:ops@example.com",
        "morning\tcron 0 7 * * 1-5 Europe/Berlin\t-> event:1:wake",
    ]
    code, out, _ = run(capsys, "automation", "show", "--data-dir", d, "hot")
    assert code == 0 and json.loads(out)["latest_runs"] == []
    assert run(capsys, "automation", "delete", "--data-dir", d, "hot")[0] == 0
    code, _, err = run(capsys, "automation", "show", "--data-dir", d, "hot")
    assert code == 2 and "no automation 'hot'" in err
    code, out, _ = run(capsys, "automation", "list", "--data-dir", d, "--json")
    assert [a["name"] for a in json.loads(out)] == ["morning"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--when", "TMPLx:V1 > 30", "--do", "event:1:x"], "no template or device 'TMPLx'"),
        (["--when", "TMPLg:V1 > warm", "--do", "event:1:x"], "> needs a number"),
        (["--when", "TMPLg:V1 > 30", "--do", "write:1:V7=1"], "has no datastream V7"),
        (["--when", "TMPLg:V1 > 30", "--do", "write:1:V2=on"], "doesn't match the Datastream data type"),
        (["--when", "TMPLg:V1 > 30", "--do", "write:99:V2=1"], "no device '99'"),
        (["--when", "TMPLg:V1 > 30", "--do", "sms:123"], "cannot read the action"),
        (["--cron", "0 25 * * *", "--do", "event:1:x"], "expected five fields"),
        (["--cron", "0 7 * * *", "--tz", "Europe/Atlantis", "--do", "event:1:x"], "unknown time zone"),
        (["--when", "TMPLg:V1 > 30", "--tz", "UTC", "--do", "event:1:x"], "--tz goes with --cron"),
    ],
)
def test_create_refuses_with_a_clear_message(data, capsys, args, message):
    d, _ = data
    code, out, err = run(capsys, "automation", "create", "--data-dir", d, "--name", "bad", *args)
    assert code == 2 and message in err, err
    assert run(capsys, "automation", "list", "--data-dir", d)[1] == ""
