"""dpgov.identity: who acts is what the deployment authenticates, never an environment label."""

from __future__ import annotations

import os
import pwd

import pytest

from dpgov.errors import UsageError
from dpgov.identity import acting_identity


def test_the_os_user_is_the_real_uid_and_dpgov_actor_changes_nothing(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setenv("DPGOV_ACTOR", "bob")
    monkeypatch.setenv("USER", "bob")
    monkeypatch.setenv("LOGNAME", "bob")
    who = acting_identity()
    assert who.name == pwd.getpwuid(os.getuid()).pw_name != "bob"
    assert who.method == "os-user"


def test_mlflow_auth_that_cannot_be_checked_is_refused(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret-pw")
    with pytest.raises(UsageError, match="cannot authenticate against the tracking server") as e:
        acting_identity()
    assert "secret-pw" not in str(e.value)


def test_an_os_user_outside_the_name_rule_is_refused(monkeypatch):
    import dpgov.identity

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setattr(dpgov.identity, "os_user", lambda: "root\u200b")
    with pytest.raises(UsageError, match=r"the operating-system user .*ZERO WIDTH SPACE"):
        acting_identity()
