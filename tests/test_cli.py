"""The command line as scripts use it: exit statuses, no prompts, interruption, languages."""

import ast
import json
import os
import re
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

import docker_image_puller as dip
from cli import SCRIPT, run_puller, start_puller
from fakeregistry import FakeRegistry
from test_fake_registry import random_layer


def test_version_and_help():
    version = run_puller(["--version"])
    assert version.returncode == 0
    assert dip.__version__ in version.stdout
    helped = run_puller(["--help"])
    assert helped.returncode == 0
    for option in ("--threads", "--platform", "--password-stdin", "--insecure", "--retry", "--output", "examples:"):
        assert option in helped.stdout


@pytest.mark.parametrize(
    "arguments",
    [
        ["NGINX:latest"],
        ["nginx@sha256:1234"],
        ["nginx", "-t", "0"],
        ["nginx", "-t", "21"],
        ["nginx", "--platform", "linux"],
        ["nginx", "--retry", "-1"],
        ["nginx", "-r", "https://mirror.example.com"],
        ["nginx", "busybox", "--json", "-o", "-"],
        [],
        ["nginx", "--no-such-option"],
    ],
)
def test_usage_errors_exit_2_and_write_nothing(tmp_path, arguments):
    work = tmp_path / "work"
    result = run_puller(arguments + ["-d", str(work)], timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) > 20
    assert not work.exists()


@pytest.mark.parametrize("option, value", [("--retry-delay", "-1"), ("--timeout", "0")])
def test_invalid_seconds_message_names_option(tmp_path, option, value):
    result = run_puller(["127.0.0.1:1/team/app:v1", option, value, "-d", str(tmp_path / "work")], timeout=60)
    assert result.returncode == 2
    assert "Invalid %s %s" % (option, value) in result.stderr


def test_invalid_reference_message_names_it(tmp_path):
    result = run_puller(["Team/App:v1", "-d", str(tmp_path / "work")])
    assert "'Team/App:v1'" in result.stderr
    assert "lowercase" in result.stderr


def test_username_without_password_never_prompts(tmp_path):
    # With no --password-stdin and no variable, the tool must fail at once, not wait for a TTY.
    result = run_puller(["127.0.0.1:9/app", "-u", "alice", "-d", str(tmp_path)], timeout=30)
    assert result.returncode == 2
    assert "--password-stdin" in result.stderr


def test_password_option_warns(tmp_path):
    with FakeRegistry(auth="basic", users={"alice": "pw-on-cli"}) as fake:
        fake.add_image("team/app", "v1", [random_layer(1, 4096)])
        result = run_puller(["%s/team/app:v1" % fake.host, "-u", "alice", "-p", "pw-on-cli", "-d", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    assert "--password-stdin" in result.stderr
    assert "pw-on-cli" not in (tmp_path / "docker_puller.log").read_text()


def test_password_from_environment(tmp_path):
    with FakeRegistry(auth="basic", users={"alice": "from-env"}) as fake:
        fake.add_image("team/app", "v1", [random_layer(1, 4096)])
        result = run_puller(["%s/team/app:v1" % fake.host, "-q", "-d", str(tmp_path)],
                            env={"DOCKER_IMAGE_PULLER_USERNAME": "alice", "DOCKER_IMAGE_PULLER_PASSWORD": "from-env"})
    assert result.returncode == 0, result.stderr


def test_failure_exits_1_with_one_line(tmp_path):
    with FakeRegistry() as fake:
        result = run_puller(["%s/team/missing:v1" % fake.host, "-d", str(tmp_path)])
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("docker_image_puller.py: error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().endswith(errors[0])
    assert "team/missing" in errors[0]
    assert "404" in errors[0]
    assert "MANIFEST_UNKNOWN" in errors[0]
    assert "Check the tag or digest" in errors[0]


def test_unreachable_registry_fails_after_retries(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_puller(["127.0.0.1:%d/team/app:v1" % port, "-d", str(tmp_path), "--retry", "2", "--retry-delay", "0.01"])
    assert result.returncode == 1
    assert "127.0.0.1:%d" % port in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("Retry") == 2


def test_verbose_shows_traceback_and_requests(tmp_path):
    with FakeRegistry() as fake:
        result = run_puller(["%s/team/missing:v1" % fake.host, "-d", str(tmp_path), "-v"])
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert re.search(r"GET http://127\.0\.0\.1:\d+/v2/team/missing/manifests/v1 -> 404", result.stderr)


def test_quiet_success_prints_nothing(tmp_path):
    with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", [random_layer(1, 4096)])
        result = run_puller(["%s/team/app:v1" % fake.host, "-q", "-d", str(tmp_path)])
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr == ""


def test_no_progress_bars_without_terminal(tmp_path):
    with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", [random_layer(1, 200_000)])
        result = run_puller(["%s/team/app:v1" % fake.host, "-d", str(tmp_path)])
    assert result.returncode == 0
    assert "\r" not in result.stderr
    assert "it/s" not in result.stderr
    assert "B/s" not in result.stderr


@pytest.mark.parametrize("signal_number, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_exits_resumable(tmp_path, signal_number, status):
    with FakeRegistry() as fake:
        image = fake.add_image("team/app", "v1", [random_layer(1, 300_000)])
        layer = image["layer_digests"][0]
        fake.fault("stall", "/blobs/" + layer, seconds=30, after_bytes=100_000)
        process = start_puller(["%s/team/app:v1" % fake.host, "-d", str(tmp_path)])
        part = tmp_path / "team_app_layers" / layer.replace(":", "_") / "blob.part"
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size >= 100_000):
            assert time.monotonic() < deadline, "the download never reached the stall"
            time.sleep(0.05)
        started = time.monotonic()
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == status, stderr
        assert time.monotonic() - started < 10
        assert "run the same command again" in stderr.lower()
        assert part.stat().st_size == 100_000
        assert not list(tmp_path.glob("*.tar"))

        fake.clear_faults()
        fake.clear_requests()
        rerun = run_puller(["%s/team/app:v1" % fake.host, "-d", str(tmp_path), "-q"])
        assert rerun.returncode == 0, rerun.stderr
        (get,) = [r for r in fake.requests_to("/blobs/" + layer) if r.method == "GET"]
        assert get.header("Range") == "bytes=100000-"


def test_chinese_from_locale(tmp_path):
    result = run_puller(["NGINX", "-d", str(tmp_path)], env={"LANG": "zh_CN.UTF-8"})
    assert result.returncode == 2
    assert "无效的镜像引用" in result.stderr
    assert "错误" in result.stderr


def test_chinese_from_option_overrides_locale(tmp_path):
    with FakeRegistry() as fake:
        zh = run_puller(["%s/team/missing:v1" % fake.host, "-d", str(tmp_path), "--lang", "zh"])
        en = run_puller(["%s/team/missing:v1" % fake.host, "-d", str(tmp_path), "--lang", "en"], env={"LC_ALL": "zh_CN.UTF-8"})
    assert "失败" in zh.stderr
    assert "请检查标签或 digest" in zh.stderr
    assert "failed" in en.stderr
    assert "失败" not in en.stderr
    # The log file stays in English whatever the terminal language.
    assert "失败" not in (tmp_path / "docker_puller.log").read_text(encoding="utf-8")


def test_chinese_help():
    result = run_puller(["--help", "--lang", "zh"])
    assert result.returncode == 0
    assert "用法" in result.stdout
    assert "并发连接数" in result.stdout


def _message_templates():
    tree = ast.parse(Path(dip.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("Text", "tr"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.args[0].value


def _placeholders(template):
    return sorted(name for _, name, _, _ in string.Formatter().parse(template) if name)


# Field terms that Chinese engineers write in English.
SAME_IN_CHINESE = {"config", "DIGEST"}


def test_every_message_has_chinese():
    templates = set(_message_templates())
    assert len(templates) > 100
    missing = sorted(t for t in templates if t not in dip.ZH_MESSAGES)
    assert missing == []
    for template in templates:
        assert _placeholders(dip.ZH_MESSAGES[template]) == _placeholders(template), template
        if template not in SAME_IN_CHINESE:
            assert dip.ZH_MESSAGES[template] != template or not re.search("[A-Za-z]{4}", template), template


def test_language_detection():
    assert dip.detect_language({"LANG": "zh_CN.UTF-8"}) == "zh"
    assert dip.detect_language({"LC_ALL": "zh_TW.UTF-8", "LANG": "en_US.UTF-8"}) == "zh"
    assert dip.detect_language({"LANGUAGE": "en", "LANG": "zh_CN.UTF-8"}) == "en"
    assert dip.detect_language({"LANG": "C.UTF-8"}) == "en"
    assert dip.detect_language({}) == "en"


def test_runs_as_plain_script_copy(tmp_path):
    copy = tmp_path / "docker_image_puller.py"
    copy.write_bytes(SCRIPT.read_bytes())
    result = subprocess.run([sys.executable, str(copy), "--version"], capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert result.returncode == 0


def test_progress_bars_on_terminal(tmp_path):
    pty = pytest.importorskip("pty", reason="pseudo-terminals are POSIX-only")
    import fcntl
    import struct
    import termios

    with FakeRegistry() as fake:
        image = fake.add_image("team/app", "v1", [random_layer(i, 500_000) for i in range(2)])
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "%s/team/app:v1" % fake.host, "-d", str(tmp_path)],
            stdin=slave, stdout=slave, stderr=slave, env=dict(os.environ, LANG="C.UTF-8"),
        )
        os.close(slave)
        output = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # Linux raises EIO once the child has closed the terminal
                break
            if not chunk:
                break
            output += chunk
        os.close(master)
        assert process.wait(timeout=60) == 0
    text = output.decode("utf-8", "replace")
    assert "team/app: 100%" in text
    for layer in image["layer_digests"]:
        assert layer.split(":")[1][:12] + ":" in text


def test_failed_image_does_not_stop_others(tmp_path):
    with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", [random_layer(1, 4096)])
        fake.add_image("team/other", "v2", [random_layer(2, 4096)])
        result = run_puller(["%s/team/missing:v1" % fake.host, "%s/team/app:v1" % fake.host, "%s/team/other:v2" % fake.host, "-d", str(tmp_path)])
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1
    assert "%s/team/missing:v1: " % fake.host in errors[0]
    assert (tmp_path / "team_app_v1.tar").is_file()
    assert (tmp_path / "team_other_v2.tar").is_file()
    assert result.stdout.split() == [str(tmp_path / "team_app_v1.tar"), str(tmp_path / "team_other_v2.tar")]


def test_colliding_archive_names_rejected(tmp_path):
    result = run_puller(["127.0.0.1:9/team/app:v1", "127.0.0.1:9/team_app:v1", "-d", str(tmp_path / "work")])
    assert result.returncode == 2
    assert "team_app_v1.tar" in result.stderr
    assert not (tmp_path / "work").exists()


def test_empty_password_stdin_rejected(tmp_path):
    result = run_puller(["127.0.0.1:9/team/app:v1", "-u", "alice", "--password-stdin", "-d", str(tmp_path / "work")], stdin="\n")
    assert result.returncode == 2
    assert "password read from standard input is empty" in result.stderr


def test_default_platform_mismatch_warns(tmp_path):
    with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", [random_layer(1, 4096)], platform=("linux", "arm64", "v8"))
        result = run_puller(["%s/team/app:v1" % fake.host, "-d", str(tmp_path)])
    assert result.returncode == 0
    assert "built for linux/arm64/v8 only" in result.stderr


def test_progress_lines_without_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr(dip, "PROGRESS_LOG_INTERVAL", 0.0)
    with FakeRegistry() as fake:
        fake.add_image("team/app", "v1", [random_layer(1, 300_000)])
        directory = tmp_path / "work"
        status = dip.main(["%s/team/app:v1" % fake.host, "-d", str(directory), "--lang", "en"])
    assert status == 0
    log = (directory / "docker_puller.log").read_text()
    assert re.search(r"team/app: [\d.]+ \w+ of [\d.]+ KiB \(\d+%\), [\d.]+ \w+/s", log)
