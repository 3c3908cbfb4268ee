"""Deployment files: the CloudFormation template lints clean; the compose file wires MinIO to the webhook."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cloudformation_template_lints_clean() -> None:
    exe = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or "cfn-lint"
    result = subprocess.run([exe, str(ROOT / "infra/aws/upload-events.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_sends_upload_events_to_the_webhook() -> None:
    compose = yaml.safe_load((ROOT / "local/docker-compose.yml").read_text())
    env = compose["services"]["minio"]["environment"]
    assert env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_PRODUCTS"].endswith("/triggers/s3")
    assert "WEBHOOK_TOKEN" in env["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_PRODUCTS"]
    setup = compose["services"]["setup"]["entrypoint"]
    assert "arn:minio:sqs::PRODUCTS:webhook" in setup and "--prefix uploads/" in setup


def test_env_example_lists_every_setting() -> None:
    from core.settings import Settings

    text = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    listed = {line.split("=", 1)[0].strip().lstrip("# ").upper() for line in text.splitlines() if "=" in line}
    missing = {name.upper() for name in Settings.model_fields} - listed
    assert not missing, f".env.example does not list {sorted(missing)}"


def test_only_the_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`core/settings.py` is the one reader of environment variables in `core/` and `functions/`
    (the dev runner and the benchmarks set up processes of their own, and may)."""
    import re

    from core.settings import Settings

    readers = [
        str(p.relative_to(ROOT))
        for folder in ("core", "functions")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if p.name != "settings.py" and re.search(r"os\.environ|os\.getenv|getenv\(", p.read_text())
    ]
    assert not readers, readers
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert Settings.default_model_cache_dir() == str(tmp_path / "shelfsearch" / "onnx")
