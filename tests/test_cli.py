"""The installed ``openexec`` console script, run as a user would run it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from openexec.approvals import ApprovalError, ApprovalVerifier
from openexec.settings import parse_public_keys
from openexec.signing import key_id
from openexec.store import SCHEMA_VERSION
from tests import approval_helpers as spec

SCRIPT = shutil.which("openexec") or str(Path(sys.executable).parent / "openexec")


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None, umask=None
) -> subprocess.CompletedProcess[str]:
    """Run the console script with a clean OPENEXEC_*/CLAWSHIELD_* environment."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENEXEC_", "CLAWSHIELD_"))
    }
    environment["OPENEXEC_FILES_ROOT"] = str(cwd / "files")
    environment.update(env or {})
    return subprocess.run(
        [SCRIPT, *args],
        cwd=cwd,
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=None if umask is None else lambda: os.umask(umask),
    )


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    result = run("keygen", "--out", str(tmp_path / "approver.pem"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path / "approver.pem", tmp_path / "approver.pem.pub"


def test_script_is_installed() -> None:
    assert Path(SCRIPT).is_file(), "pip install -e . to get the openexec console script"


# --- keygen ----------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o277, 0o000])
def test_keygen_writes_a_private_key_0600_and_a_public_key(tmp_path: Path, umask: int) -> None:
    result = run("keygen", "--out", "key.pem", cwd=tmp_path, umask=umask)
    assert result.returncode == 0, result.stderr
    private_path, public_path = tmp_path / "key.pem", tmp_path / "key.pem.pub"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert private_path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    private = load_pem_private_key(private_path.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    (public,) = parse_public_keys(public_path.read_text())
    assert public.public_bytes(Encoding.Raw, PublicFormat.Raw) == private.public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )
    assert result.stdout.strip() == key_id(public)


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("precious")
    result = run("keygen", "--out", "key.pem", cwd=tmp_path)
    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert (tmp_path / "key.pem").read_text() == "precious"
    assert not (tmp_path / "key.pem.pub").exists()

    (tmp_path / "other.pem.pub").write_text("precious")
    result = run("keygen", "--out", "other.pem", cwd=tmp_path)
    assert result.returncode == 2
    assert not (tmp_path / "other.pem").exists()
    assert (tmp_path / "other.pem.pub").read_text() == "precious"


def test_keygen_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "key.pem").symlink_to(tmp_path / "elsewhere.pem")
    assert run("keygen", "--out", "key.pem", cwd=tmp_path).returncode == 2
    assert not (tmp_path / "elsewhere.pem").exists()


def test_keygen_into_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    result = run("keygen", "--out", "missing/key.pem", cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot create" in result.stderr
    assert "Traceback" not in result.stderr


# --- approve ---------------------------------------------------------------------------------


def verifier(public_path: Path, **overrides: object) -> ApprovalVerifier:
    options: dict = {
        "keys": parse_public_keys(public_path.read_text()),
        "tenant_id": None,
        "service_id": None,
        "clock_skew_s": 0,
    }
    options.update(overrides)
    return ApprovalVerifier(**options)


def test_approve_v1(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    private_path, public_path = keypair
    payload = {"msg": "h\u00e9 \U0001f600", "n": [1.5, 10.0, None, True]}
    before = datetime.now(UTC)
    result = run(
        "approve",
        *("--key", str(private_path), "--action", "echo", "--format", "v1"),
        *("--payload", json.dumps(payload), "--tenant", "acme", "--ttl", "120"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    artifact = json.loads(result.stdout)
    assert artifact["action_hash"] == spec.v1_action_hash("echo", payload)
    check = verifier(public_path, tenant_id="acme")
    approval = check.verify(artifact, "echo", payload, "any-nonce")
    assert approval.format == "clawshield-v1"
    assert approval.tenant_id == "acme"
    assert approval.expires_at - approval.not_before == timedelta(seconds=120)
    assert before - timedelta(seconds=1) <= approval.not_before <= datetime.now(UTC)
    check.check_window(approval, approval.not_before)
    with pytest.raises(ApprovalError):
        check.verify(artifact, "echo", {**payload, "n": 2}, "any-nonce")


def test_approve_v2_with_nonce_audience_and_payload_file(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    private_path, public_path = keypair
    payload = {"path": "notes/ä.txt", "content": "日本"}
    (tmp_path / "payload.json").write_text(json.dumps(payload, ensure_ascii=False))
    result = run(
        "approve",
        *("--key", str(private_path), "--action", "files.write", "--format", "v2"),
        *("--payload-file", "payload.json", "--nonce", "n-1", "--aud", "svc", "--ttl", "60"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    artifact = json.loads(result.stdout)
    check = verifier(public_path, service_id="svc")
    approval = check.verify(artifact, "files.write", payload, "n-1")
    assert approval.format == "openexec-v2"
    assert approval.nonce == "n-1"
    assert approval.tenant_id is None
    assert approval.expires_at - approval.not_before == timedelta(seconds=60)
    for nonce, service in (("n-2", "svc"), ("n-1", "other")):
        with pytest.raises(ApprovalError):
            verifier(public_path, service_id=service).verify(
                artifact, "files.write", payload, nonce
            )


def test_approve_defaults_to_v2_with_an_empty_payload_from_stdin(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    private_path, public_path = keypair
    result = run(
        "approve", "--key", str(private_path), "--action", "echo", "--payload-file", "-",
        cwd=tmp_path, stdin="{}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    approval = verifier(public_path).verify(json.loads(result.stdout), "echo", {}, "n")
    assert approval.format == "openexec-v2"
    assert approval.expires_at - approval.not_before == timedelta(seconds=300)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--payload", "{not json"], "not valid JSON"),
        (["--payload", "[1, 2]"], "JSON object"),
        (["--payload", '{"x": NaN}'], "not valid JSON"),
        (["--payload", '{"x": 1, "x": 2}'], "duplicate"),
        (["--payload-file", "missing.json"], "cannot read"),
        (["--format", "v1", "--nonce", "n-1"], "need --format v2"),
        (["--format", "v1", "--aud", "svc"], "need --format v2"),
        (["--ttl", "0"], "--ttl"),
        (["--ttl", "soon"], "invalid int"),
        (["--nonce", "has space"], "--nonce"),
        (["--nonce", ""], "--nonce"),
        (["--tenant", ""], "--tenant"),
        (["--format", "v3"], "invalid choice"),
        (["--payload", "{}", "--payload-file", "p.json"], "not allowed with"),
    ],
)
def test_approve_rejects_bad_input(
    tmp_path: Path, keypair: tuple[Path, Path], extra: list[str], message: str
) -> None:
    result = run("approve", "--key", str(keypair[0]), "--action", "echo", *extra, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_approve_rejects_unusable_keys(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pem").write_bytes(
        ec_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    cases = {
        "missing.pem": "cannot read",
        str(keypair[1]): "not an unencrypted PEM private key",
        "ec.pem": "not an Ed25519 private key",
    }
    for key, message in cases.items():
        result = run("approve", "--key", key, "--action", "echo", cwd=tmp_path)
        assert result.returncode == 2
        assert message in result.stderr


# --- actions and plugins ---------------------------------------------------------------------

ECHO_ONLY = {"OPENEXEC_PLUGINS": "openexec-echo"}


def test_plugins(tmp_path: Path) -> None:
    result = run("plugins", cwd=tmp_path, env=ECHO_ONLY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("openexec-echo ")
    assert "echo" in result.stdout and "add" in result.stdout
    listing = json.loads(run("plugins", "--json", cwd=tmp_path, env=ECHO_ONLY).stdout)
    assert [plugin["name"] for plugin in listing] == ["openexec-echo"]
    assert sorted(listing[0]["actions"]) == ["add", "echo"]
    assert isinstance(listing[0]["version"], str)


def test_plugins_set_but_empty_loads_none(tmp_path: Path) -> None:
    result = run("plugins", "--json", cwd=tmp_path, env={"OPENEXEC_PLUGINS": ""})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_actions(tmp_path: Path) -> None:
    result = run("actions", cwd=tmp_path, env=ECHO_ONLY)
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["add", "echo"]
    listing = json.loads(run("actions", "--json", cwd=tmp_path, env=ECHO_ONLY).stdout)
    echo = next(action for action in listing if action["name"] == "echo")
    assert echo["plugin"] == "openexec-echo"
    assert echo["description"]
    assert isinstance(echo["plugin_version"], str)
    assert isinstance(echo["input_schema"], dict)


def test_actions_honour_the_allow_list(tmp_path: Path) -> None:
    env = {**ECHO_ONLY, "OPENEXEC_ALLOWED_ACTIONS": "echo"}
    listing = json.loads(run("actions", "--json", cwd=tmp_path, env=env).stdout)
    assert [action["name"] for action in listing] == ["echo"]


@pytest.mark.parametrize("command", ["actions", "plugins"])
@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OPENEXEC_PLUGINS": "not-installed-anywhere"}, "OPENEXEC_PLUGINS"),
        ({**ECHO_ONLY, "OPENEXEC_ALLOWED_ACTIONS": "ecko"}, "OPENEXEC_ALLOWED_ACTIONS"),
        ({"OPENEXEC_MODE": "bogus"}, "OPENEXEC_MODE"),
        ({"OPENEXEC_MODE": "clawshield"}, "CLAWSHIELD_PUBLIC_KEY"),
    ],
)
def test_configuration_errors_exit_2(
    tmp_path: Path, command: str, env: dict[str, str], variable: str
) -> None:
    result = run(command, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


# --- receipts verify -------------------------------------------------------------------------

RECEIPT_KEY = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
RESULT = {"echo": {"msg": "hé"}}


APPROVAL = {"id": "ap-1", "format": "openexec-v2", "sha256": "ab" * 32, "key_id": "cd" * 8}


def receipt(
    key: Ed25519PrivateKey = RECEIPT_KEY,
    result: dict | None = RESULT,
    mode: str = "demo",
    approval: dict | None = None,
) -> dict:
    """A receipt envelope built from the format in docs/receipts.md, independently of
    openexec.receipts."""
    request_sha256 = hashlib.sha256(
        rfc8785.dumps({"action": "echo", "payload": {"msg": "hé"}})
    ).hexdigest()
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "openexec/execution/ex-1", "digest": {"sha256": request_sha256}}],
        "predicateType": "urn:openexec:receipt:v1",
        "predicate": {
            "exec_id": "ex-1",
            "tenant_id": None,
            "nonce": "n-1",
            "action": "echo",
            "plugin": {"name": "openexec-echo", "version": "0.1.0"},
            "mode": mode,
            "approval": approval,
            "request_sha256": request_sha256,
            "status": "succeeded",
            "result_sha256": None
            if result is None
            else hashlib.sha256(rfc8785.dumps(result)).hexdigest(),
            "error": None,
            "started_at": "2030-01-01T00:00:00Z",
            "completed_at": "2030-01-01T00:00:01Z",
            "service": {"name": "openexec", "version": "0.1.0"},
        },
    }
    return spec.dsse_sign(key, rfc8785.dumps(statement), "application/vnd.in-toto+json")


@pytest.fixture
def receipt_files(tmp_path: Path) -> tuple[Path, Path]:
    envelope_path, key_path = tmp_path / "receipt.json", tmp_path / "receipt-key.pub"
    envelope_path.write_text(json.dumps(receipt()))
    key_path.write_bytes(
        RECEIPT_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return envelope_path, key_path


def verify(tmp_path: Path, envelope: Path, key: Path, *extra: str, stdin: str | None = None):
    return run(
        "receipts", "verify", str(envelope), "--public-key", str(key), *extra,
        cwd=tmp_path, stdin=stdin,
    )  # fmt: skip


def test_receipt_valid(tmp_path: Path, receipt_files: tuple[Path, Path]) -> None:
    result = verify(tmp_path, *receipt_files)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "valid ex-1 succeeded mode=demo approval=none"


def test_receipt_valid_names_its_mode_and_approval(tmp_path: Path) -> None:
    envelope_path, key_path = tmp_path / "receipt.json", tmp_path / "receipt-key.pub"
    envelope_path.write_text(json.dumps(receipt(mode="clawshield", approval=APPROVAL)))
    key_path.write_bytes(
        RECEIPT_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    for extra in ([], ["--require-approval"]):
        result = verify(tmp_path, envelope_path, key_path, *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == (
            "valid ex-1 succeeded mode=clawshield approval=ap-1 (openexec-v2)"
        )


def test_receipt_verify_require_approval_refuses_a_receipt_no_approval_backed(
    tmp_path: Path, receipt_files: tuple[Path, Path]
) -> None:
    result = verify(tmp_path, *receipt_files, "--require-approval")
    assert result.returncode == 1
    assert result.stdout.startswith("invalid: ")
    assert "no approval" in result.stdout and "demo" in result.stdout
    assert "valid ex-1" not in result.stdout


def test_receipt_verify_require_approval_still_reports_a_bad_signature_first(
    tmp_path: Path, receipt_files: tuple[Path, Path]
) -> None:
    envelope_path, key_path = receipt_files
    envelope_path.write_text(json.dumps(receipt(Ed25519PrivateKey.generate())))
    result = verify(tmp_path, envelope_path, key_path, "--require-approval")
    assert result.returncode == 1
    assert "Invalid signature" in result.stdout


def test_receipt_valid_with_matching_result(
    tmp_path: Path, receipt_files: tuple[Path, Path]
) -> None:
    escaped = '{"echo": {"msg": "h\\u00e9"}}'
    assert verify(tmp_path, *receipt_files, "--result", escaped).returncode == 0
    (tmp_path / "result.json").write_text(json.dumps(RESULT))
    assert verify(tmp_path, *receipt_files, "--result-file", "result.json").returncode == 0
    assert (
        verify(tmp_path, *receipt_files, "--result-file", "-", stdin=json.dumps(RESULT)).returncode
        == 0
    )


def test_receipt_with_a_different_result_is_invalid(
    tmp_path: Path, receipt_files: tuple[Path, Path]
) -> None:
    for other in ('{"echo": {"msg": "he"}}', "null", "{}"):
        result = verify(tmp_path, *receipt_files, "--result", other)
        assert result.returncode == 1
        assert result.stdout.startswith("invalid: ")
        assert "result" in result.stdout


def test_receipt_signed_by_another_key_or_tampered_is_invalid(
    tmp_path: Path, receipt_files: tuple[Path, Path]
) -> None:
    envelope_path, key_path = receipt_files
    envelope_path.write_text(json.dumps(receipt(Ed25519PrivateKey.generate())))
    result = verify(tmp_path, envelope_path, key_path)
    assert result.returncode == 1
    assert "Invalid signature" in result.stdout

    tampered = receipt()
    tampered["payload"] = spec.dsse_sign(RECEIPT_KEY, b"{}")["payload"]
    envelope_path.write_text(json.dumps(tampered))
    assert verify(tmp_path, envelope_path, key_path).returncode == 1


def test_receipt_verify_accepts_rotated_key_files(
    tmp_path: Path, receipt_files: tuple[Path, Path]
) -> None:
    envelope_path, key_path = receipt_files
    other = Ed25519PrivateKey.generate().public_key()
    pem = other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    key_path.write_text(pem + key_path.read_text())
    assert verify(tmp_path, envelope_path, key_path).returncode == 0


@pytest.mark.parametrize(
    ("envelope", "key", "extra", "message"),
    [
        ("missing.json", "key.pub", [], "cannot read"),
        ("receipt.json", "missing.pub", [], "cannot read"),
        ("receipt.json", "garbage.json", [], "--public-key"),
        ("receipt.json", "key.pub", ["--result", "{bad"], "not valid JSON"),
    ],
)
def test_receipt_verify_usage_errors_exit_2(
    tmp_path: Path, envelope: str, key: str, extra: list[str], message: str
) -> None:
    (tmp_path / "receipt.json").write_text(json.dumps(receipt()))
    (tmp_path / "garbage.json").write_text("not json at all")
    (tmp_path / "key.pub").write_bytes(
        RECEIPT_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    result = verify(tmp_path, tmp_path / envelope, tmp_path / key, *extra)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_receipt_file_that_is_not_json_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "garbage.json").write_text("not json at all")
    (tmp_path / "key.pub").write_bytes(
        RECEIPT_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    result = verify(tmp_path, tmp_path / "garbage.json", tmp_path / "key.pub")
    assert result.returncode == 1
    assert result.stdout.startswith("invalid: ") and "not valid JSON" in result.stdout


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run(cwd=tmp_path)
    assert result.returncode == 2
    assert "usage" in result.stderr


FIXTURE_V1 = Path(__file__).parent / "fixtures" / "store-v1"


def test_db_upgrade_brings_a_0_1_0_store_to_the_current_schema(tmp_path: Path) -> None:
    """The command the refusal names, run as an operator would: the service then starts."""
    from tests.support.processes import Uvicorn

    store = tmp_path / "store"
    shutil.copytree(FIXTURE_V1, store)
    env = {
        "OPENEXEC_DB_URL": f"sqlite:///{store / 'openexec.db'}",
        "OPENEXEC_RECEIPT_KEY": str(store / "receipt-key.pem"),
        "OPENEXEC_MODE": "clawshield",
        "CLAWSHIELD_PUBLIC_KEY": (store / "approver.pub").read_text(),
    }
    refused = subprocess.run(
        [sys.executable, "-c", "import main"],
        cwd=Path(__file__).parents[1],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "run `openexec db upgrade`" in refused.stderr

    upgraded = run("db", "upgrade", cwd=tmp_path, env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"from schema revision v1 to {SCHEMA_VERSION}" in upgraded.stdout
    assert "5 executions are not in the witness ledger yet" in upgraded.stdout
    again = run("db", "upgrade", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout

    server = Uvicorn("main:app", env, log=tmp_path / "uvicorn.log")
    try:
        old = json.loads((store / "executions.json").read_text())[0]
        replay = httpx.post(f"{server.url}/execute", json=old["request"], timeout=30).json()
        assert replay.pop("ledger_index") in (None, 0)  # the first started, once appended
        assert replay == {**old["response"], "replayed": True}
    finally:
        server.stop()


def test_db_upgrade_refuses_a_database_it_did_not_create(tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "other.db") as connection:
        connection.execute("CREATE TABLE executions (id TEXT PRIMARY KEY)")
    result = run("db", "upgrade", cwd=tmp_path, env={"OPENEXEC_DB_URL": "sqlite:///other.db"})
    assert result.returncode == 2 and "not created by OpenExec" in result.stderr
