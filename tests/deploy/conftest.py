"""Paths shared by the deploy/ tests."""

from __future__ import annotations

import pathlib

from tests.harness import ROOT

DEPLOY = ROOT / "deploy"


def deploy_files() -> list[pathlib.Path]:
    """Every file under deploy/ (what a user copies; what must not drift from kubekv)."""
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())
