"""runtime/hub.py: a hub name without network fails at once, in one line naming the offline alternatives."""

from __future__ import annotations

import time

import pytest

from runtime import hub


def test_local_path_passes_without_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda *a: pytest.fail("probed for a local path"))
    hub.check_hub_name(str(tmp_path), "--model", "x")


def test_offline_variable_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "cached", lambda name: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a: pytest.fail("probed although offline was forced"))
    with pytest.raises(hub.HubUnreachableError) as e:
        hub.check_hub_name("xlm-roberta-large", "--tokenizer", "--train-tokenizer N")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--tokenizer xlm-roberta-large:") and "HF_HUB_OFFLINE" in msg
    assert msg.endswith("Offline: --train-tokenizer N")


def test_unreachable_hub_fails_within_the_probe_timeout(monkeypatch):
    for var in hub.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setattr(hub, "cached", lambda name: False)
    start = time.monotonic()
    with pytest.raises(hub.HubUnreachableError, match="unreachable"):
        hub.check_hub_name("org/some-model", "--model", "--model tiny")
    assert time.monotonic() - start < 3 * hub.PROBE_TIMEOUT_S


def test_cached_name_passes_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "cached", lambda name: True)
    hub.check_hub_name("xlm-roberta-large", "--model", "x")
