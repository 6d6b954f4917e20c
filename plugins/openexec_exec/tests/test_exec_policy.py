"""The policy file: typos stop startup, allow entries match unambiguously, and the safe bins'
argument profiles hold against the bypasses OpenClaw's safe bins have seen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openexec_exec.policy import AllowEntry, PolicyError, load_policy

from tests.support.processes import clean_environment


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('securty = "full"\n', "securty: unknown key"),
        ('security = "yolo"\n', "security:"),
        ('safe_bins = ["bash"]\n', "no argument profile for bash"),
        ('[[allow]]\npath = "git"\n', "absolute real path"),
        ('[[allow]]\npath = "/usr/bin/git"\nargz = []\n', "allow.0.argz: unknown key"),
        ("[limits]\nprocess = 5\n", "limits.process: unknown key"),
        ("default_timeout_s = 10\nmax_timeout_s = 5\n", "default_timeout_s is above"),
        ('sandbox = "docker"\n', "sandbox:"),
        ("security = \n", "not valid TOML"),
    ],
)
def test_a_policy_typo_stops_startup_naming_it(tmp_path: Path, text: str, named: str) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(policy)
    assert "OPENEXEC_EXEC_POLICY" in str(caught.value) and named in str(caught.value)


def test_a_policy_typo_stops_the_service(exec_host) -> None:
    with pytest.raises(Exception, match="securty: unknown key"):
        exec_host('securty = "full"\n')


def test_a_missing_policy_file_stops_startup(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.toml")


def test_argument_patterns_match_one_argument_each() -> None:
    entry = AllowEntry(path="/usr/bin/git", args=("log", "--oneline"))
    assert entry.matches("/usr/bin/git", ["log", "--oneline"])
    assert not entry.matches("/usr/bin/git", ["log --oneline"])  # one argument is not two
    assert not entry.matches("/usr/bin/git", ["log", "--oneline", "-p"])
    rest = AllowEntry(path="/usr/bin/git", args=("status", "**"))
    assert rest.matches("/usr/bin/git", ["status"]) and rest.matches(
        "/usr/bin/git", ["status", "-s"]
    )
    assert not rest.matches("/usr/bin/git", ["push"])
    glob = AllowEntry(path="/opt/*/bin/tool")
    assert glob.matches("/opt/a/bin/tool", []) and not glob.matches("/opt/a/b/bin/tool", [])
    assert AllowEntry(path="/opt/**/tool").matches("/opt/a/b/bin/tool", [])
    with pytest.raises(ValueError, match="last argument pattern"):
        AllowEntry(path="/usr/bin/git", args=("**", "x"))


def test_allow_entries_restrict_arguments_through_the_host(exec_host) -> None:
    host = exec_host('[[allow]]\npath = "/usr/bin/date"\nargs = ["-u", "+%Y"]\n')
    assert host.run({"argv": ["date", "-u", "+%Y"]})["exit_code"] == 0
    assert "do not match these arguments" in host.refused({"argv": ["date", "-s", "2000-01-01"]})


SAFE_BIN_POLICY = 'safe_bins = ["cut", "uniq", "head", "tail", "tr", "wc", "sort", "grep"]\n'


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["sort", "-o", "out.txt"], "option -o is not allowed"),
        (["sort", "--output=out.txt"], "--output is not allowed"),
        (["sort", "--compress-program=sh"], "--compress-program is not allowed"),
        (["sort", "--compress-prog=sh"], "long options must be exact"),
        (["sort", "-T", "dir"], "option -T is not allowed"),
        (["grep", "-r", "secret"], "option -r is not allowed"),
        (["grep", "--recursive", "secret"], "--recursive is not allowed"),
        (["grep", "-f", "patterns"], "option -f is not allowed"),
        (["grep", "-e", "x", "file"], "takes no operands"),
        (["wc", "--files0-from=list"], "--files0-from is not allowed"),
        (["wc", "--files0"], "long options must be exact"),
        (["head", "--lin=1"], "long options must be exact"),
        (["head", "/etc/shadow"], "looks like a path"),
        (["head", "-n", "1", "notes.txt"], "takes no operands"),
        (["tail", "~root"], "looks like a path"),
        (["cut", "-d", "$IFS", "-f1"], "glob or expansion character"),
        (["tr", "a-z", "$HOME"], "glob or expansion character"),
        (["wc", "*"], "glob or expansion character"),
        (["uniq", "in", "out"], "takes no operands"),
        (["head", "-5"], "option -5 is not allowed"),
    ],
)
def test_safe_bin_bypasses_are_refused(exec_host, argv: list[str], reason: str) -> None:
    host = exec_host(SAFE_BIN_POLICY)
    assert reason in host.refused({"argv": argv})


def test_safe_bins_run_with_the_arguments_their_profile_accepts(exec_host) -> None:
    host = exec_host(SAFE_BIN_POLICY)
    text = "b\na\nb\n"
    assert host.run({"argv": ["sort", "-u"], "stdin": text})["stdout"] == "a\nb\n"
    assert host.run({"argv": ["grep", "-c", "b"], "stdin": text})["stdout"] == "2\n"
    assert host.run({"argv": ["head", "--lines=1"], "stdin": text})["stdout"] == "b\n"
    assert host.run({"argv": ["tr", "ab", "xy"], "stdin": text})["stdout"] == "y\nx\ny\n"
    assert host.run({"argv": ["wc", "-l"], "stdin": text})["stdout"] == "3\n"


def test_a_safe_bin_outside_the_trusted_dirs_needs_an_allow_entry(exec_host) -> None:
    host = exec_host()
    tool = host.workspace / "head"
    tool.write_bytes(Path("/usr/bin/head").read_bytes())
    tool.chmod(0o755)
    assert "trusted_dirs" in host.refused({"argv": ["./head", "-n", "1"]})


def test_openexec_plugins_shows_the_effective_policy_and_creates_nothing(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('security = "deny"\n[limits]\nprocesses = 7\n')
    environment = {
        **clean_environment(),
        "OPENEXEC_PLUGINS": "openexec-exec",
        "OPENEXEC_EXEC_POLICY": str(policy),
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "openexec"), "plugins", "--json"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (listed,) = json.loads(done.stdout)
    assert listed["effective"]["policy"]["security"] == "deny"
    assert listed["effective"]["policy"]["limits"]["processes"] == 7
    assert sorted(os.listdir(tmp_path)) == ["policy.toml"]  # no workspace, no state, no daemon
