"""Logs and disk: the per-attempt cap keeps head and tail with a marker, retention keeps the
store under its limit, and a reattach after a crash resumes a capped log at the right byte."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import time
import zlib
from pathlib import Path

import pytest

from fleet import logstore
from fleet.ids import new_id
from fleet.logstore import PACK, LogStore, bucket
from tests.helpers import eventually

KiB, MiB = 1 << 10, 1 << 20
# 16,384 numbered lines like a training loop's log, 71 bytes each: 1.1 MiB. Printed by awk (a
# shell loop of printf cost 90 ms of CPU per job, most of this file's time).
PRINT_1MIB = ("awk 'BEGIN { for (i = 0; i < 16384; i++) printf \"line %06d step loss 0.%06d lr 0.001 "
              "grad-norm 1.2345 tokens/s 1234\\n\", i, i }'")


def _line(i: int) -> bytes:
    return b"line %06d step loss 0.%06d lr 0.001 grad-norm 1.2345 tokens/s 1234\n" % (i, i)


def test_capped_store_keeps_head_and_tail_and_offsets_across_restart(tmp_path):
    cap = 64 * KiB
    store = LogStore(tmp_path, cap)
    data = b"".join(_line(i) for i in range(16384))
    for k in range(0, len(data), 10_000):  # arrives in chunks
        store.append("j", "a", data[k:k + 10_000])
    assert store.size("j", "a") == len(data)
    # A new store (a controller after kill -9) finds the same received count from the files.
    assert LogStore(tmp_path, cap).size("j", "a") == len(data)
    on_disk = sum(p.stat().st_size for p in store.files("j", "a"))
    assert on_disk <= cap
    text, offset = b"", 0
    while True:
        chunk, offset = store.read("j", "a", offset)
        if not chunk:
            break
        text += chunk
    assert text.startswith(data[: cap // 2])
    assert text.endswith(data[-cap // 4:])
    assert b"bytes dropped here" in text
    store.close("a", "j")
    assert [p.name for p in (tmp_path / bucket("a")).iterdir()] == ["a.log.gz"]  # tail dir gone too
    reread, offset = b"", 0
    while True:
        chunk, offset = store.read("j", "a", offset)
        if not chunk:
            break
        reread += chunk
    assert reread == text and store.size("j", "a") == len(data)


def store_bytes(logs_dir: Path) -> int:
    """Bytes in the server's log store (read while its retention may be removing files)."""
    return LogStore(logs_dir).total_bytes()


@pytest.mark.long
def test_hundreds_of_jobs_of_1mib_stay_under_the_store_limit_with_head_and_tail(fleet, tmp_path):
    inv = tmp_path / "hosts.ini"
    inv.write_text("localhost ansible_connection=local fleet_slots=8\n")
    limit = 512 * KiB
    client = fleet.start(inv, config={"log_cap": 64 * KiB, "log_store_limit": limit})
    ids: list[str] = []
    for batch in range(2):
        ids += [j.id for j in client.submit_many(
            [{"name": f"big-{batch}-{i}", "run": PRINT_1MIB} for i in range(100)])]
    for job_id in ids:
        assert client.wait(job_id, 300).state == "SUCCEEDED"
    logs_dir = fleet.settings.logs_dir

    # Retention runs once the store grew by an eighth of the limit since its last pass (and
    # every gc_interval): the store is at most that much over the limit once the jobs ended.
    total = eventually(lambda: (size := store_bytes(logs_dir)) <= limit + limit // 8 and size, timeout=10,
                       what="store within its limit")
    kept = removed = 0
    for job_id in ids:
        text = b"".join(client.logs(job_id))
        if text.startswith(b"[fleet: this log was removed"):
            removed += 1
            continue
        kept += 1
        assert text.startswith(_line(0) + _line(1)), text[:200]
        assert text.endswith(_line(16382) + _line(16383)), text[-200:]
        assert b"bytes dropped here" in text
        assert len(text) < 64 * KiB + 200
    print(f"{len(ids)} x 1.1 MiB: store {total / MiB:.1f} MiB, {kept} logs kept whole (head+tail), {removed} removed")
    assert kept + removed == len(ids)
    assert kept >= 60  # gzipped capped logs of this kind are ~5 KiB: ~100 fit in 512 KiB
    assert removed >= 50  # and the rest went


def test_capped_log_survives_kill9_mid_stream_without_gap_or_duplicate(fleet, tmp_path):
    inv = tmp_path / "hosts.ini"
    inv.write_text("localhost ansible_connection=local fleet_slots=1\n")
    cfg = {"log_cap": 64 * KiB}
    client = fleet.start(inv, config=cfg)
    slow = ('i=0; while [ $i -lt 4000 ]; do printf "line %06d step loss 0.%06d lr 0.001 '
            'grad-norm 1.2345 tokens/s 1234\\n" $i $i; i=$((i+1)); '
            '[ $((i % 200)) -eq 0 ] && sleep 0.1; done')
    job_id = client.submit({"name": "slow", "run": slow}).id
    eventually(lambda: len(b"".join(client.logs(job_id))) > 40 * KiB, what="log past the head")
    os.kill(fleet.info.pid, signal.SIGKILL)
    fleet.client.close()
    time.sleep(0.5)
    client = fleet.start(inv, config=cfg)
    assert client.wait(job_id, 60).state == "SUCCEEDED"
    text = b"".join(client.logs(job_id))
    head, marker, tail = text.partition(b"\n[fleet: ")
    assert marker, "no drop marker"
    tail = tail.split(b"]\n", 1)[1]
    # The cut falls anywhere in a line: drop the head's last and the tail's first partial line.
    head_numbers = [int(line.split()[1]) for line in head.splitlines()[:-1]]
    tail_numbers = [int(line.split()[1]) for line in tail.splitlines()[1:]]
    assert head_numbers == list(range(len(head_numbers)))
    # The tail is contiguous up to the end: no gap and no duplicate after the reattach.
    assert tail_numbers == list(range(tail_numbers[0], 4000))
    gz = next(Path(fleet.settings.logs_dir).rglob("*.log.gz"))
    assert gzip.open(gz).readline().startswith(b"fleet-log ")


def test_retention_by_age_and_size_spares_logs_being_written(tmp_path):
    store = LogStore(tmp_path, 64 * KiB)
    now = time.time()
    for i in range(10):
        store.append(f"j{i}", f"a{i}", b"x" * 10_000)
        store.close(f"a{i}", f"j{i}")
        (gz,) = store.files(f"j{i}", f"a{i}")
        os.utime(gz, (now - (10 - i) * 86400, now - (10 - i) * 86400))  # j0 oldest
    store.append("jrun", "arun", b"y" * 50_000)  # running: never collected
    removed, _ = store.collect(max_age=7.5 * 86400, max_bytes=None)
    assert removed == 3 and not store.files("j0", "a0") and store.files("j3", "a3")
    assert not (tmp_path / bucket("a0")).exists()  # an emptied bucket goes too
    sizes = sum(p.stat().st_size for p in tmp_path.rglob("*.gz"))
    removed, _ = store.collect(max_age=None, max_bytes=sizes // 2)
    left = sorted(p.name for p in tmp_path.rglob("*.gz"))
    assert left == [f"a{i}.log.gz" for i in range(10 - len(left), 10)]  # the newest stay
    assert store.size("jrun", "arun") == 50_000  # the open log was not touched


def test_the_server_keeps_its_log_store_under_the_limit(fleet, tmp_path):
    inv = tmp_path / "hosts.ini"
    inv.write_text("localhost ansible_connection=local fleet_slots=8\n")
    limit = 256 * KiB
    client = fleet.start(inv, config={"log_cap": 64 * KiB, "log_store_limit": limit})
    ids = [j.id for j in client.submit_many(
        [{"name": f"n{i}", "run": PRINT_1MIB} for i in range(100)])]
    for job_id in ids:
        assert client.wait(job_id, 120).state == "SUCCEEDED"
    logs_dir = fleet.settings.logs_dir

    eventually(lambda: store_bytes(logs_dir) <= limit + limit // 8, timeout=10, what="store within its limit")
    texts = [b"".join(client.logs(j)) for j in ids]
    removed = [t for t in texts if t.startswith(b"[fleet: this log was removed")]
    assert 0 < len(removed) < len(ids)
    assert texts[-1].startswith(_line(0)) and texts[-1].endswith(_line(16383))  # newest kept


def test_a_tiny_log_stays_plain_and_reads_the_same(tmp_path):
    """gzip would cost more than it saves on a few lines: an ended attempt's log of at most
    4 KiB is not compressed. Without an event loop (a tool using the store; a controller packs
    them, see below) it is kept as its file, read back, sized and collected like a compressed
    one."""
    store = LogStore(tmp_path, 64 * KiB)
    store.append("j", "a", b"hello\n" * 10)
    store.close("a", "j")
    assert [p.name for p in (tmp_path / bucket("a")).iterdir()] == ["a.log"]
    assert store.read("j", "a", 0) == (b"hello\n" * 10, 60)
    assert LogStore(tmp_path, 64 * KiB).size("j", "a") == 60
    store.append("j", "b", b"x" * 5000)
    store.close("b", "j")
    assert sorted(p.name for p in (tmp_path / bucket("b")).iterdir()) == ["a.log", "b.log.gz"]
    size = sum(p.stat().st_size for p in (tmp_path / bucket("b")).iterdir())
    assert store.collect(max_age=None, max_bytes=0) == (2, size)
    assert not (tmp_path / bucket("b")).exists()


def test_a_flooding_host_is_capped_from_a_new_jobs_first_byte_and_attempts_keep_apart(tmp_path):
    """A new attempt opens its log without looking for files (its head file was just made):
    a host sending far more than the cap is still cut to head and tail; the job's second
    attempt, in the same bucket, starts at 0 and never reads the first attempt's files; a
    controller restarted mid-attempt resumes at the byte it had."""
    cap = 16 * KiB
    store = LogStore(tmp_path / "new-root" / "logs", cap)  # the root itself is made on first use
    flood = b"".join(_line(i) for i in range(4096))  # 280 KiB against a 16 KiB cap
    for k in range(0, len(flood), 7_000):
        store.append("j", "a1", flood[k:k + 7_000])
    assert store.size("j", "a1") == len(flood)
    assert sum(p.stat().st_size for p in store.files("j", "a1")) <= cap
    store.close("a1", "j")

    store.append("j", "a2", b"second attempt\n")
    assert store.size("j", "a2") == 15
    assert store.read("j", "a2", 0) == (b"second attempt\n", 15)
    restarted = LogStore(tmp_path / "new-root" / "logs", cap)  # kill -9, then a reattach
    assert restarted.size("j", "a2") == 15
    restarted.append("j", "a2", b"and on\n")
    assert restarted.read("j", "a2", 0) == (b"second attempt\nand on\n", 22)
    assert restarted.size("j", "a1") == len(flood)  # the first attempt's log is untouched


def test_logs_of_the_old_layout_are_read_resumed_and_collected(tmp_path):
    """Before buckets an attempt's files lived in a directory per job: a controller upgraded
    while an attempt runs resumes its log where it is (head and tail segment there), reads the
    ended ones, writes new attempts in buckets, and its retention removes both kinds."""
    cap = 16 * KiB  # head 8 KiB, segments of 4 KiB
    job, running, ended = new_id("j"), new_id("a"), new_id("a")
    old = tmp_path / job
    old.mkdir()
    (old / f"{running}.log").write_bytes(b"h" * (8 * KiB))  # a full head
    (old / f"{running}.log.{10 * KiB}").write_bytes(b"t" * 1000)  # its tail, after 2 KiB dropped
    with gzip.open(old / f"{ended}.log.gz", "wb") as fh:
        fh.write(b"fleet-log 6 6 6\nended\n")
    store = LogStore(tmp_path, cap)
    assert store.size(job, running) == 10 * KiB + 1000
    assert store.read(job, ended, 0) == (b"ended\n", 6)
    store.append(job, running, b"more")
    assert (old / f"{running}.log.{10 * KiB}").read_bytes() == b"t" * 1000 + b"more"  # resumed in place
    data, offset = store.read(job, running, 8 * KiB)
    assert b"2048 bytes dropped" in data and offset == 10 * KiB
    assert store.read(job, running, offset + 1000) == (b"more", offset + 1004)
    new = new_id("a")  # the job's next attempt, made by this controller: in a bucket
    store.append(job, new, b"new\n")
    assert store.files(job, new) == [tmp_path / bucket(new) / f"{new}.log"]
    store.close(running, job)
    store.close(new, job)
    assert [p.name for p in store.files(job, running)] == [f"{running}.log.gz"]
    (tmp_path / bucket(new) / f"{new_id('a')}.tail").mkdir()  # left empty by a crash
    assert store.collect(max_age=None, max_bytes=0)[0] == 3
    assert list(tmp_path.iterdir()) == []  # the old job directory and the bucket are gone


def _whole(store: LogStore, job: str, attempt: str) -> bytes:
    text, offset = b"", 0
    while True:
        chunk, offset = store.read(job, attempt, offset)
        if not chunk:
            return text
        text += chunk


async def test_tiny_logs_of_a_controller_are_packed_one_file_per_bucket_and_read_by_any_store(tmp_path):
    """A controller (a store with an event loop) keeps a few lines in memory and packs them at
    the attempt's end: 300 ended attempts leave one file per bucket, not 300; each reads back
    whole, from this store and from a new one (a restart, another replica), with its size; a
    second end of the same attempt (followed again) is the one read; retention removes the pack
    and counts its attempts."""
    store = LogStore(tmp_path, 64 * KiB)
    ids = [new_id("a") for _ in range(300)]
    for i, attempt in enumerate(ids):
        store.append("j", attempt, b"start %d\n" % i)
        assert store.read("j", attempt, 0) == (b"start %d\n" % i, len(b"start %d\n" % i))  # while it runs
        store.append("j", attempt, b"done\n" * (i % 7))
        store.close(attempt, "j")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [PACK] * len({bucket(a) for a in ids})
    other = LogStore(tmp_path, 64 * KiB)
    for i, attempt in enumerate(ids):
        expected = b"start %d\n" % i + b"done\n" * (i % 7)
        assert _whole(store, "j", attempt) == expected == _whole(other, "j", attempt)
        assert store.size("j", attempt) == len(expected) == other.size("j", attempt)
        assert other.exists("j", attempt) and other.files("j", attempt) == [tmp_path / bucket(attempt) / PACK]
    # Followed again after its record was written (a restart before the end was): resumed at
    # its size, and its new end is what is read.
    again = LogStore(tmp_path, 64 * KiB)
    first = ids[0]
    assert again.size("j", first) == 8
    again.append("j", first, b"more\n")
    again.close(first, "j")
    assert _whole(LogStore(tmp_path, 64 * KiB), "j", first) == b"start 0\nmore\n"
    size = sum(p.stat().st_size for p in files)
    assert other.collect(max_age=None, max_bytes=0) == (300, size)
    assert list(tmp_path.iterdir()) == [] and not other.exists("j", ids[5])


async def test_a_tiny_log_goes_to_its_file_when_it_grows_or_lives_long_and_a_stop_lets_it_go(tmp_path, monkeypatch):
    """Past 4 KiB a log is written as any other (head file, then gzip at the end); a quiet
    attempt's few lines reach their file after FLUSH_AFTER, where another replica reads them;
    a controller stopped or killed with lines in memory has nothing of them on disk, so the
    next one resumes at 0 and the host sends the whole log again (none twice)."""
    monkeypatch.setattr(logstore, "FLUSH_AFTER", 0.05)
    store, other = LogStore(tmp_path, 64 * KiB), LogStore(tmp_path, 64 * KiB)
    quiet, big, cut = new_id("a"), new_id("a"), new_id("a")
    store.append("j", quiet, b"one line\n")
    assert not (tmp_path / bucket(quiet) / f"{quiet}.log").exists() and other.read("j", quiet, 0) == (b"", 0)
    await asyncio.sleep(0.3)
    assert (tmp_path / bucket(quiet) / f"{quiet}.log").read_bytes() == b"one line\n"
    assert other.read("j", quiet, 0) == (b"one line\n", 9)
    store.append("j", quiet, b"two\n")
    store.close(quiet, "j")  # no longer in memory: its file, as before
    assert _whole(other, "j", quiet) == b"one line\ntwo\n" and store.files("j", quiet)[0].name == f"{quiet}.log"

    payload = b"".join(_line(i) for i in range(100))  # 7,100 bytes
    store.append("j", big, payload[:3000])
    store.append("j", big, payload[3000:])
    assert (tmp_path / bucket(big) / f"{big}.log").read_bytes() == payload
    store.close(big, "j")
    assert [p.name for p in store.files("j", big)] == [f"{big}.log.gz"] and _whole(other, "j", big) == payload

    store.append("j", cut, b"before the stop\n")
    store.close_all()
    await asyncio.sleep(0.2)  # its flush was called off
    restarted = LogStore(tmp_path, 64 * KiB)
    assert restarted.size("j", cut) == 0 and not restarted.exists("j", cut)
    restarted.append("j", cut, b"before the stop\nand after\n")  # the host, from 0
    restarted.close(cut, "j")
    assert _whole(LogStore(tmp_path, 64 * KiB), "j", cut) == b"before the stop\nand after\n"


async def test_a_torn_or_damaged_record_in_a_pack_costs_only_its_own_log(tmp_path):
    """A record cut short (a full disk, a crash) or with damaged bytes is skipped; the records
    before and after it read whole, and a full disk keeps the log's size as a gap."""
    store = LogStore(tmp_path, 64 * KiB)
    a, b, c, d = (new_id("a") for _ in range(4))
    store.append("j", a, b"first\n")
    store.close(a, "j")
    pack = tmp_path / bucket(a) / PACK
    with pack.open("ab") as fh:  # a record whose bytes never all came
        fh.write(b"\0fleet-tiny %s 100 100 00000000\nonly part" % new_id("a").encode())
    store.append("j", b, b"second\n")
    store.close(b, "j")
    raw = pack.read_bytes()
    pack.write_bytes(raw + b"\0fleet-tiny %s 4 4 00000000\nbad!" % c.encode())  # bytes that fail their crc
    store.append("j", d, b"fourth\n")
    store.close(d, "j")
    fresh = LogStore(tmp_path, 64 * KiB)
    assert [_whole(fresh, "j", x) for x in (a, b, c, d)] == [b"first\n", b"second\n", b"", b"fourth\n"]
    assert not fresh.exists("j", c)

    full = [True]
    store.paused = lambda: full[0]  # the disk is full (fleet.disk) while this attempt logs
    e = new_id("a")
    store.append("j", e, b"x" * 50)
    store.close(e, "j")
    text = _whole(LogStore(tmp_path, 64 * KiB), "j", e)
    assert b"50 bytes dropped" in text and store.size("j", e) == 50


async def test_a_record_is_never_read_inside_and_what_files_replace_stays_replaced(tmp_path):
    """A reader (another replica) that sees a record half written waits for it, and never
    takes a record a job printed inside its log for a real one; an attempt resumed from its
    record whose log then grew to files voids the record, so retention removing the files
    leaves nothing old to read; a log no host keeps (a hook's) is a file from its first line;
    a pack that cannot be written leaves the log in its file."""
    store = LogStore(tmp_path, 64 * KiB)
    victim, liar = new_id("a"), new_id("a")
    store.append("j", victim, b"the real log\n")
    store.close(victim, "j")
    pack = tmp_path / bucket(victim) / PACK
    forged = b"\0fleet-tiny %s 7 7 %08x\nforged\n" % (victim.encode(), zlib.crc32(b"forged\n"))
    data = b"ok\n" + forged + b"done\n"
    record = b"\0fleet-tiny %s %d %d %08x\n" % (liar.encode(), len(data), len(data), zlib.crc32(data)) + data
    follower = LogStore(tmp_path, 64 * KiB)
    assert _whole(follower, "j", victim) == b"the real log\n"
    with pack.open("ab") as fh:  # the leader's write, as a follower may see it half done
        fh.write(record[:len(record) - 4])
    assert not follower.exists("j", liar) and _whole(follower, "j", victim) == b"the real log\n"
    with pack.open("ab") as fh:
        fh.write(record[len(record) - 4:])
    assert _whole(follower, "j", liar) == data and _whole(follower, "j", victim) == b"the real log\n"

    again = LogStore(tmp_path, 64 * KiB)  # followed again after its record; it grows to files
    again.append("j", victim, b"x" * 5000)
    again.close(victim, "j")
    assert [p.name for p in again.files("j", victim)] == [f"{victim}.log.gz"]
    for path in again.files("j", victim):
        path.unlink()  # what retention does to an attempt's files
    assert not LogStore(tmp_path, 64 * KiB).exists("j", victim)

    hook = new_id("a") + ".before"
    store.append("j", hook, b"[hook before x] ok\n", own=True)
    assert (tmp_path / bucket(hook) / f"{hook}.log").read_bytes() == b"[hook before x] ok\n"
    store.close(hook, "j")

    root, blocked = tmp_path / "other", new_id("a")
    (root / bucket(blocked) / PACK).mkdir(parents=True)  # no pack can be written there
    other = LogStore(root, 64 * KiB)
    other.append("j", blocked, b"kept anyway\n")
    other.close(blocked, "j")
    assert (root / bucket(blocked) / f"{blocked}.log").read_bytes() == b"kept anyway\n"
    assert _whole(LogStore(root, 64 * KiB), "j", blocked) == b"kept anyway\n"
