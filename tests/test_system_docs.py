"""docs/system.md stays true: its syscall table lists exactly the calls of the syscall layer, with their
permissions."""

from __future__ import annotations

import re
from pathlib import Path

from llmasos.system.syscalls import TABLE

DOC = Path(__file__).resolve().parent.parent / "docs" / "system.md"


def test_the_documented_syscall_table_matches_the_code():
    rows = re.findall(r"^\| `([a-z_.]+)` \| (.+?) \|", DOC.read_text(), re.M)
    documented = {name: perm for name, perm in rows if "." in name or name == "embed"}
    assert set(documented) == set(TABLE)
    for name, spec in TABLE.items():
        perm = documented[name]
        if spec.permission is None:
            assert perm.startswith("none"), name
        else:
            assert perm.startswith(f"`{spec.permission}`"), (name, perm)
