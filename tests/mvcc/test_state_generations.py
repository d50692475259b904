"""Start-up removes the state databases a defragmentation replaced or left half copied:
each is a whole state db, and only the one `state.current` names is the member's."""

from __future__ import annotations

from kubekv_server.backend.state_db import Backend


def _dirs(member) -> list[str]:
    return sorted(p.name for p in member.iterdir() if p.is_dir())


def test_a_copy_cut_short_is_removed_and_the_current_db_kept(tmp_path):
    member = tmp_path / "member"
    b = Backend(str(member / "state"))
    b.close()
    (member / "state.1").mkdir()  # a defragmentation's copy, cut before the pointer moved
    (member / "state.1" / "data.mdb").write_bytes(b"half a copy")
    (member / "state-notes").mkdir()  # not a generation: left alone
    b = Backend(str(member / "state"))
    try:
        assert b.path == str(member / "state")
        assert _dirs(member) == ["state", "state-notes"]
    finally:
        b.close()


def test_replaced_generations_go_and_read_only_opens_remove_nothing(tmp_path):
    member = tmp_path / "member"
    b = Backend(str(member / "state"))
    old_env, old_dir = b.defragment()
    old_env.close()  # (the server keeps it a minute for readers; a restart comes first)
    b.close()
    assert _dirs(member) == ["state", "state.1"]
    ro = Backend(str(member / "state"), readonly=True)
    try:
        assert ro.path == str(member / "state.1")
        assert _dirs(member) == ["state", "state.1"]
    finally:
        ro.close()
    b = Backend(str(member / "state"))
    try:
        assert b.path == str(member / "state.1")
        assert _dirs(member) == ["state.1"]
    finally:
        b.close()


def test_a_pointer_naming_no_db_removes_nothing(tmp_path):
    """A data dir whose pointer names a missing db (restored in part): the other
    generations stay for the operator, as start-up cannot tell which one is right."""
    member = tmp_path / "member"
    Backend(str(member / "state")).close()
    (member / "state.current").write_text("state.3")
    b = Backend(str(member / "state"))
    try:
        assert b.path == str(member / "state.3")
        assert _dirs(member) == ["state", "state.3"]
    finally:
        b.close()
