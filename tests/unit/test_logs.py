"""control/logs.py: the JSON formatter (one valid object per line) and the text default; `ovl-dp --version`."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from control import cli, logs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own writing JSON into a buffer; the TAP context is reset afterwards."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("ovl-dp-test-logs")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        yield log, out
    finally:
        log.removeHandler(handler)
        logs.set_tap(None)


def records(out: io.StringIO) -> list[dict[str, object]]:
    lines = out.getvalue().splitlines()
    return [json.loads(line) for line in lines]  # every line is one whole JSON object


def test_a_record_has_time_level_message(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    log.info("tap %s up", "ovl-vxlan")
    (rec,) = records(out)
    assert rec["level"] == "info" and rec["message"] == "tap ovl-vxlan up"
    assert "tap" not in rec  # not known yet
    stamp = str(rec["time"])
    assert stamp.endswith("Z")
    when = datetime.datetime.fromisoformat(stamp)  # RFC 3339 / ISO 8601, UTC
    assert when.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60


def test_tap_and_extra_fields(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    logs.set_tap("ovl-gre")
    log.warning(
        "remote added", extra={"event": "remote_add", "remote": "192.0.2.2", "remotes": ["a", "b"], "mac": b"\x02\x01"}
    )
    (rec,) = records(out)
    assert rec["tap"] == "ovl-gre" and rec["level"] == "warning"
    assert rec["event"] == "remote_add" and rec["remote"] == "192.0.2.2" and rec["remotes"] == ["a", "b"]
    assert rec["mac"] == "0201"  # bytes as hex
    assert not {"args", "msg", "levelno", "pathname", "exc_info"} & set(rec)  # no LogRecord internals


def test_exceptions_are_a_field_and_nothing_breaks_the_line(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("counters:\n  tap_rx=1\n  tap_tx=2")
    log.debug("after", extra={"obj": object()})
    text = out.getvalue()
    assert text.count("\n") == 2  # two records, two lines: the newlines inside are escaped
    first, second = records(out)
    assert first["level"] == "error" and first["message"] == "counters:\n  tap_rx=1\n  tap_tx=2"
    assert "Traceback" in str(first["exception"]) and "ValueError: bad\nthing" in str(first["exception"])
    assert second["level"] == "debug" and str(second["obj"]).startswith("<object object")


def test_setup_text_is_the_default_and_json_on_request() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    buf = io.StringIO()
    try:
        logs.setup(fmt="text", stream=buf)
        logging.getLogger("ovl-dp").info("hello")
        assert " ovl-dp[" in buf.getvalue() and " INFO hello" in buf.getvalue()
        buf2 = io.StringIO()
        logs.setup(verbose=True, fmt="json", stream=buf2)  # replaces our handler, not anyone else's
        assert [h.get_name() for h in root.handlers].count("ovl-dp") == 1
        logging.getLogger("ovl-dp").debug("dbg")
        assert json.loads(buf2.getvalue())["message"] == "dbg"
        assert "dbg" not in buf.getvalue()
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)


def test_bad_log_format_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--log-format", "xml", "probe"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ovl-dp: error:") and "xml" in err


def pyproject_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"ovl-dp {pyproject_version()}\n"
    res = subprocess.run(
        [sys.executable, "-m", "control.cli", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert (res.returncode, res.stdout, res.stderr) == (0, f"ovl-dp {pyproject_version()}\n", "")


def test_version_falls_back_to_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise cli.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(cli.importlib.metadata, "version", missing)
    assert cli.version() == pyproject_version()


def test_loop_errors_are_one_line_each_then_counted(logger: tuple[logging.Logger, io.StringIO]) -> None:
    """What reaches the loop's exception handler: one warning per kind without a traceback, the same
    kind again within the interval only counted, and said when it is next logged."""
    log, out = logger
    now = [100.0]
    errors = logs.LoopErrors(log, interval=10.0, clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(errors)

    def boom() -> None:
        raise OSError(24, "Too many open files")

    try:
        for _ in range(5):
            loop.call_soon(boom)
        loop.run_until_complete(asyncio.sleep(0))
        loop.call_exception_handler({"message": "socket.accept() out of system resource"})
        now[0] += 11
        loop.call_soon(boom)
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    got = records(out)
    assert errors.count == 7
    assert [r["level"] for r in got] == ["warning"] * 3, got
    assert all("exception" not in r for r in got), got
    assert "OSError: [Errno 24] Too many open files" in str(got[0]["message"])
    assert got[1]["message"] == "socket.accept() out of system resource"
    assert str(got[2]["message"]).endswith("(4 more like it not logged)"), got[2]


def test_a_foreign_librarys_traceback_is_one_line() -> None:
    """gRPC's Cython layer logs exceptions through the root logger; in the daemon's log they are one line."""
    root = logging.getLogger()
    before = list(root.handlers)
    buf = io.StringIO()
    try:
        logs.setup(fmt="text", stream=buf)
        try:
            b"\xff".decode()
        except UnicodeDecodeError:
            logging.getLogger("grpc._cython.cygrpc").exception("Invalid encoding on %s", b"\xfe\x80")
            logging.getLogger("ovl-dp").exception("ours keep theirs")
        lines = buf.getvalue().splitlines()
        assert "grpc._cython.cygrpc: Invalid encoding on b'\\xfe\\x80': UnicodeDecodeError:" in lines[0]
        assert lines[1].endswith("ours keep theirs") and lines[2] == "Traceback (most recent call last):"
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
    broken = logging.LogRecord("grpc.aio", logging.ERROR, __file__, 1, "broken %s %s", ("too few",), None)
    assert logs.OneLineForeign().filter(broken) and broken.getMessage() == "grpc.aio: broken %s %s ('too few',)"
