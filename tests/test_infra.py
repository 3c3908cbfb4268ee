"""Deployment files: the CloudFormation template lints clean; the compose file wires MinIO to the webhook."""

import shutil
import subprocess
import sys
from pathlib import Path

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
