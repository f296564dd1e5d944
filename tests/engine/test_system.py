"""engine.system: the per-system set-up done before torch loads."""
from __future__ import annotations

from engine.system import MPS_FALLBACK, prepare


def test_macos_gets_the_mps_fallback_unless_the_user_chose():
    env: dict[str, str] = {}
    notes = prepare(env, "darwin")
    assert env[MPS_FALLBACK] == "1" and any("MPS" in n for n in notes)
    chosen = {MPS_FALLBACK: "0"}
    assert prepare(chosen, "darwin") == [] and chosen[MPS_FALLBACK] == "0"
    for other in ("linux", "win32"):
        env = {}
        assert prepare(env, other) == [] and env == {}
