"""The job journal behaves the same on SQLite and on Redis: every test below runs on both backends
(a SQLite file in tmp_path; a real redis-server with a password, from tests/conftest.py)."""

from __future__ import annotations

import dataclasses

import pytest

from serve.jobs.journal import Journal, JournalError, open_journal
from serve.jobs.journal_redis import PASSWORD_ENV, RedisJournal
from serve.jobs.journal_sqlite import SqliteJournal
from serve.jobs.records import JobRecord


@pytest.fixture(params=["sqlite", "redis"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def journal_url(backend, request, tmp_path) -> str:
    if backend == "sqlite":
        return str(tmp_path / "state" / "journal.sqlite")
    server = request.getfixturevalue("redis_server")
    server.flush()
    return server.url(db=3)


@pytest.fixture
def opened():
    """open_journal, closing every journal it opened at the end of the test."""
    journals: list[Journal] = []

    def open_(url: str, app_name: str = "test-app") -> Journal:
        journals.append(open_journal(url, app_name))
        return journals[-1]

    yield open_
    for journal in journals:
        journal.close()


@pytest.fixture
def journal(journal_url, opened) -> Journal:
    return opened(journal_url)


def job(seq: int, **changes) -> JobRecord:
    return dataclasses.replace(JobRecord(
        request_id=f"req-{seq}", seq=seq, endpoint_id="fal-ai/sam2/image", queue_base="fal-ai/sam2",
        deployment="fal_ai__sam2__image", payload={"image_url": "data:image/png;base64,AAAA"},
        base_url="http://127.0.0.1:8000", created_at=1_700_000_000.0 + seq), **changes)


def full_record() -> JobRecord:
    """Every field set to something other than its default, with values JSON must carry exactly."""
    return JobRecord(
        request_id="0b6f3c1e-full", seq=42, endpoint_id="fal-ai/sam2/video", queue_base="fal-ai/sam2",
        deployment="fal_ai__sam2__video",
        payload={"video_url": "https://example.test/v.mp4", "prompts": [{"x": 3, "y": 4.5, "label": 1}],
                 "text": "ünïcødé ✓", "nested": {"none": None, "flag": True, "list": [1, 2.25, "x"]}},
        base_url="https://visus.example.test", webhook_url="https://hooks.example.test/done?id=1",
        status="COMPLETED", created_at=1_700_000_000.123456, started_at=1_700_000_001.000001,
        completed_at=1_700_000_009.987654, start_deadline=1_700_000_060.5, result_status=422,
        result_body={"detail": [{"loc": ["body", "prompts"], "msg": "bad", "type": "value_error"}]},
        result_headers={"X-Fal-Request-Timeout-Type": "user", "content-type": "application/json"},
        webhook_state="pending", dispatch_count=2)


def log(i: int, text: str = "line") -> dict:
    return {"message": f"{text} {i}", "level": "INFO", "source": "user", "timestamp": f"2024-01-01T00:00:{i:02d}"}


# ------------------------------------------------------------------ both backends
def test_full_record_round_trips(journal):
    record = full_record()
    journal.save(record)
    record.logs = [log(0), log(1, "ünïcødé")]
    for n, entry in enumerate(record.logs):
        journal.append_log(record.request_id, n, entry)
    assert journal.load(record.request_id) == record


def test_a_record_with_defaults_round_trips(journal):
    record = job(1)
    journal.save(record)
    assert journal.load("req-1") == record


def test_unknown_request_loads_as_none(journal):
    assert journal.load("nope") is None


def test_save_updates_in_place(journal):
    record = job(1)
    journal.save(record)
    record.status, record.started_at, record.dispatch_count = "IN_PROGRESS", 5.0, 1
    journal.save(record)
    assert journal.load("req-1") == record
    assert [j.status for j in journal.unfinished()] == ["IN_PROGRESS"]
    record.status, record.completed_at, record.result_status, record.result_body = "COMPLETED", 6.0, 200, {"ok": 1}
    journal.save(record)
    assert journal.load("req-1") == record
    assert journal.unfinished() == []
    assert journal.max_seq() == 1


def test_logs_keep_their_order_and_rewriting_an_index_replaces_it(journal):
    journal.save(job(1))
    journal.save(job(2))
    for n in [2, 0, 1, *range(3, 12)]:  # out of order, and past 10 (numeric order, not text order)
        journal.append_log("req-1", n, log(n))
    journal.append_log("req-1", 1, log(1, "again"))  # a retried write of entry 1
    journal.append_log("req-1", 1, log(1, "again"))
    journal.append_log("req-2", 0, log(0, "other job"))
    logs = journal.load("req-1").logs
    assert logs == [log(0), log(1, "again"), *[log(n) for n in range(2, 12)]]
    assert journal.load("req-2").logs == [log(0, "other job")]


def test_saving_the_record_keeps_its_logs(journal):
    record = job(1)
    journal.save(record)
    journal.append_log("req-1", 0, log(0))
    record.status = "IN_PROGRESS"  # the in-memory record's logs are not what save() writes
    journal.save(record)
    assert journal.load("req-1").logs == [log(0)]


def test_unfinished_are_ordered_by_seq(journal):
    for seq in [3, 1, 5, 2, 4, 6]:
        journal.save(job(seq))
    journal.save(job(2, status="COMPLETED", result_status=200))
    journal.save(job(5, status="IN_PROGRESS", started_at=1.0))
    journal.save(job(6, status="COMPLETED", result_status=500))
    journal.append_log("req-4", 0, log(0))
    unfinished = journal.unfinished()
    assert [j.request_id for j in unfinished] == ["req-1", "req-3", "req-4", "req-5"]
    assert [j.status for j in unfinished] == ["IN_QUEUE", "IN_QUEUE", "IN_QUEUE", "IN_PROGRESS"]
    assert unfinished[2].logs == [log(0)]


def test_pending_webhooks(journal):
    hook = {"webhook_url": "https://hooks.example.test/x"}
    done = {"status": "COMPLETED", "result_status": 200, "result_body": {"ok": True}}
    journal.save(job(5, **hook, **done, webhook_state="pending"))
    journal.save(job(1, **hook, webhook_state="pending"))  # not finished yet
    journal.save(job(2, **hook, **done, webhook_state="pending"))
    journal.save(job(3, **hook, **done, webhook_state="delivered"))
    journal.save(job(4, **hook, **done, webhook_state="failed"))
    journal.save(job(6, **done))  # no webhook
    assert [j.request_id for j in journal.pending_webhooks()] == ["req-2", "req-5"]
    journal.save(job(2, **hook, **done, webhook_state="delivered"))
    journal.save(job(1, **hook, **done, webhook_state="pending"))
    pending = journal.pending_webhooks()
    assert [j.request_id for j in pending] == ["req-1", "req-5"]
    assert pending[1] == job(5, **hook, **done, webhook_state="pending")


def test_max_seq(journal):
    assert journal.max_seq() == 0
    for seq in [7, 3, 12, 9]:
        journal.save(job(seq))
    assert journal.max_seq() == 12
    journal.save(job(12, status="COMPLETED", result_status=200))
    assert journal.max_seq() == 12


def test_a_reopened_journal_sees_everything(journal_url, opened):
    first = opened(journal_url)
    records = [job(1), job(2, status="IN_PROGRESS", started_at=2.0), full_record(),
               job(3, status="COMPLETED", result_status=200, result_body={"image": {"url": "u"}})]
    for record in records:
        first.save(record)
    for n in range(3):
        first.append_log("req-2", n, log(n))
    records[1].logs = [log(n) for n in range(3)]
    first.close()

    again = opened(journal_url)
    for record in records:
        assert again.load(record.request_id) == record
    assert [j.request_id for j in again.unfinished()] == ["req-1", "req-2"]
    assert [j.request_id for j in again.pending_webhooks()] == [full_record().request_id]
    assert again.max_seq() == 42


def test_open_journal_picks_the_backend_by_scheme(journal_url, opened, backend):
    assert isinstance(opened(journal_url), SqliteJournal if backend == "sqlite" else RedisJournal)


# ------------------------------------------------------------------ URL forms and Redis specifics
def test_sqlite_url_forms(tmp_path, opened, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absolute = opened(f"sqlite:///{tmp_path}/abs.sqlite")  # sqlite:////abs/path, as SQLAlchemy writes it
    relative = opened("sqlite:///rel/journal.sqlite")
    assert isinstance(absolute, SqliteJournal) and absolute.path == f"{tmp_path}/abs.sqlite"
    assert relative.path == "rel/journal.sqlite" and (tmp_path / "rel" / "journal.sqlite").exists()


def test_unsupported_schemes_are_config_errors():
    from pydantic import ValidationError

    from serve.config import VisusConfig

    with pytest.raises(ValueError, match="unsupported journal URL scheme 'postgres'"):
        open_journal("postgres://db/visus")
    with pytest.raises(ValidationError, match="unsupported journal URL scheme 'mysql'"):
        VisusConfig(journal_url="mysql://db/visus")
    redis_url = "rediss://:pw@redis.example.test:6380/1"
    assert VisusConfig(journal_url=redis_url).resolved_journal_url == redis_url
    assert VisusConfig(home="/srv/visus").resolved_journal_url == "/srv/visus/journal.sqlite"


def test_wrong_password_is_a_clear_error(redis_server, monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(JournalError, match="authentication failed") as wrong:
        open_journal(redis_server.url(password="not-the-password"))
    message = str(wrong.value)
    assert "not-the-password" not in message and f"127.0.0.1:{redis_server.port}" in message
    assert PASSWORD_ENV in message
    with pytest.raises(JournalError, match="authentication failed"):
        open_journal(redis_server.url(password=None))


def test_password_from_the_environment(redis_server, opened, monkeypatch):
    redis_server.flush()
    monkeypatch.setenv(PASSWORD_ENV, redis_server.password)
    journal = opened(redis_server.url(password=None))
    journal.save(job(1))
    assert journal.load("req-1") == job(1)
    monkeypatch.setenv(PASSWORD_ENV, "wrong")  # the URL's password wins over the environment
    assert opened(redis_server.url()).load("req-1") == job(1)


def test_two_apps_keys_do_not_mix(redis_server, opened):
    redis_server.flush()
    url = redis_server.url()
    a, b = opened(url, "app-a"), opened(url, "app-b")
    a.save(job(1, payload={"app": "a"}))
    a.save(job(2))
    b.save(job(1, payload={"app": "b"}, status="COMPLETED", result_status=200, webhook_url="https://h.test",
                  webhook_state="pending"))
    a.append_log("req-1", 0, log(0, "a"))
    b.append_log("req-1", 0, log(0, "b"))
    assert a.load("req-1").payload == {"app": "a"} and a.load("req-1").logs == [log(0, "a")]
    assert b.load("req-1").payload == {"app": "b"} and b.load("req-1").logs == [log(0, "b")]
    assert b.load("req-2") is None
    assert (a.max_seq(), b.max_seq()) == (2, 1)
    assert [j.request_id for j in a.unfinished()] == ["req-1", "req-2"] and b.unfinished() == []
    assert a.pending_webhooks() == [] and [j.request_id for j in b.pending_webhooks()] == ["req-1"]
    with redis_server.client() as admin:
        keys = admin.keys("*")
    assert keys and all(k.startswith(("visus:app-a:", "visus:app-b:")) for k in keys)


def test_key_prefix_from_the_url(redis_server, opened):
    redis_server.flush()
    journal = opened(redis_server.url(query="prefix=team-x%3Avisus%3A"), "ignored")
    journal.save(job(1))
    journal.append_log("req-1", 0, log(0))
    with redis_server.client() as admin:
        keys = admin.keys("*")
    assert sorted(keys) == ["team-x:visus:job:req-1", "team-x:visus:log:req-1", "team-x:visus:seq",
                            "team-x:visus:unfinished"]


def test_redis_reconnects_after_the_connection_drops(redis_server, opened):
    redis_server.flush()
    journal = opened(redis_server.url())
    journal.save(job(1))
    with redis_server.client() as admin:
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    journal.save(job(2))
    assert [j.request_id for j in journal.unfinished()] == ["req-1", "req-2"]


def test_jobs_survive_a_redis_restart_with_appendonly(tmp_path, opened):
    from tests.conftest import free_port
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path, free_port(), appendonly=True)
    try:
        journal = opened(server.url())
        journal.save(job(1))
        journal.save(job(2, status="COMPLETED", result_status=200, webhook_url="https://h.test",
                         webhook_state="pending"))
        journal.append_log("req-1", 0, log(0))
        server.restart()  # SIGTERM: Redis flushes its append-only file before it exits
        journal.append_log("req-1", 1, log(1))  # the open journal reconnects by itself
        again = opened(server.url())
        assert again.load("req-1").logs == [log(0), log(1)]
        assert [j.request_id for j in again.unfinished()] == ["req-1"]
        assert [j.request_id for j in again.pending_webhooks()] == ["req-2"]
        assert again.max_seq() == 2
    finally:
        server.stop()
