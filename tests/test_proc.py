"""sslseg.proc.run_logged: output goes to the log, failures raise with the log's tail."""

import sys

import pytest

from sslseg.proc import CommandFailed, run_logged


def test_run_logged_writes_log_and_times(tmp_path):
    log = tmp_path / "logs" / "ok.log"
    dt = run_logged(
        [sys.executable, "-c", "import os; print('hi', os.environ['HF_HUB_OFFLINE'])"],
        log,
        cwd=tmp_path,
        tag="t",
    )
    assert dt > 0
    assert log.read_text().strip() == "hi 1"


def test_run_logged_failure_names_exit_code_and_tail(tmp_path):
    log = tmp_path / "bad.log"
    code = "import sys; [print(i) for i in range(50)]; sys.exit(3)"
    with pytest.raises(CommandFailed, match=r"exit 3") as err:
        run_logged([sys.executable, "-c", code], log, cwd=tmp_path, tag="t", tail_lines=5)
    msg = str(err.value)
    assert "49" in msg and "\n44\n" not in msg, msg
