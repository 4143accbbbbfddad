"""The example in docs/python.md runs as written and charges once per intent."""

import os
import subprocess
import sys

from conftest import REPO


def test_charge_tool_example_runs(stack):
    env = {
        **os.environ,
        "DATABASE_URL": stack.database_url,
        "IDEM_URL": stack.api,
        "IDEM_TOKEN": stack.agent_token,
    }
    out = subprocess.run(
        [sys.executable, str(REPO / "clients/python/examples/charge_tool.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith("outbox charge: succeeded"), out
    first, second = lines[1].split(), lines[2].split()
    assert first[1] == second[1] == "succeeded", out
    assert first[2] == second[2], "a re-planned call names the same action"
    assert second[-1] == "True"
    assert len(stack.effects(first[2])) == 1
