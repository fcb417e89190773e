"""One simulated history: a seeded world, the real producer and reader in it, faults, and
the invariants checked after every step (see ``tests/support/sim/__init__.py``)."""

from __future__ import annotations

import gc
import hashlib
import importlib
import json
import os
import pkgutil
import random
import re
import shutil
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from deltaferry import failpoints
from deltaferry.errors import DeltaferryError, TransientError, VerificationError
from deltaferry.readers import VersionError
from tests.support.sim import source as sim_source
from tests.support.sim.source import SCHEMAS, Source
from tests.support.sim.store import SimStore

# unusual, so that "names the job" cannot be met by chance ("sim" is in every fault text)
JOB = "jq7"
RETRIES = 2  # a step's attempts: 1 + RETRIES, as DELTAFERRY_STEP_RETRIES gives the flow

_current: World | None = None


def current() -> World:
    assert _current is not None, "no simulated world is running"
    return _current


class SimCrash(failpoints.SimulatedCrash):
    """The simulated process died here: nothing catches it but the world, and deltaferry's
    handlers that write on their way out of an error let it pass (``failpoints.killed``)."""


class Violation(AssertionError):
    """An invariant does not hold: the seed found a bug."""


@dataclass
class Stats:
    """What a set of histories did (the long run prints it)."""

    histories: int = 0
    steps: int = 0
    runs: int = 0
    pulls: int = 0
    crashes: int = 0
    checks: int = 0
    reopens: int = 0  # a process's files let go of at its end (``World.ended``)
    multi: int = 0  # histories with several producers (``World.multi``)
    conflicts: int = 0  # conflicts their replicas recorded (concurrent edits of a key)
    failures: list[str] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)

    def add(self, other: Stats) -> None:
        for name in ("histories", "steps", "runs", "pulls", "crashes", "checks", "reopens", "multi", "conflicts"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures += other.failures
        self.faults.update(other.faults)
        self.errors.update(other.errors)

    def report(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"histories {self.histories}, steps {self.steps} (producer runs {self.runs}, pulls "
            f"{self.pulls}), crashes {self.crashes}, files closed and opened again "
            f"{self.reopens}, invariant checks {self.checks}, failures {len(self.failures)}\n"
            f"with several producers: {self.multi} histories, {self.conflicts} conflicts recorded\n"
            f"faults injected: {faults}\n"
            f"named errors met (expected under the faults): {errors}"
        )


# ``items``'s contract in a jobs file, by the version its holder moved to (``upgrade_contract``):
# v2 is the chain, the source's rows stay at v1 (the producer migrates them)
ITEMS_CONTRACT = {
    1: 'contract = "tests.support.sim.contract:Items"',
    2: 'contract = "tests.support.sim.contract:ItemsChain"\nsource_version = 1',
}

JOBS_TOML = """
[jobs.jq7]
source = "sql_database"
url = "sqlite:///unused-by-the-simulator.db"
lake = "file:///sim-lake"
max_batch_rows = {max_batch_rows}
rows_per_file = {rows_per_file}
max_quarantine_ratio = 0.0
{producers}
[[jobs.jq7.tables]]
name = "items"
primary_key = ["id"]
cursor = "updated_at"
deletes = "soft:deleted_at"
{items_contract}

[[jobs.jq7.tables]]
name = "tags"
primary_key = ["a", "b"]
cursor = "updated_at"
deletes = "reconcile"
contract = "tests.support.sim.contract:Tags"
"""


# several producers (``World.multi``): their ids, and each one's clock against the world's
# (seconds; beyond ``max_clock_skew_seconds`` = 300 some of the time, so the skew notes run)
PRODUCERS = ("pa", "pb", "pc")
# the share of several-producer histories with a third producer (drawn from a generator
# of its own: the two-producer histories stay what they were)
P_THIRD = 0.3
SKEWS = (0, 0, 2, -2, 45, -45, 400, -400, 3600)
# the share of histories with several producers (drawn from a generator of its own: the
# single-producer histories stay what they were)
P_MULTI = 0.3


@dataclass
class Site:
    """One producer: its source, its home, its clock's skew, and what the world knows of
    it. A single-producer history has one, ``name`` None (the lake's one chain)."""

    name: str | None
    source: Source
    home: Path
    skew: int = 0  # seconds its clock is ahead of the world's
    # tables whose newest manifest of this producer's chain the lake lost (``World.lose_tip``)
    lost_tips: set[str] = field(default_factory=set)
    quiet: bool = False  # its source unchanged since its last run that ended ok
    raced: bool = False  # a zombie runner of it published since it last agreed with the lake
    snapshot: dict[str, bytes] = field(default_factory=dict)
    # per table, the other producers' newest logical time when the site's next batch could
    # first have been stamped (``World._check_causality``)
    floor: dict[str, int] = field(default_factory=dict)


class _InlineExecutor:
    """``concurrent.futures.ThreadPoolExecutor`` that runs each task at once in the calling
    thread: the parts of a batch go up in order, so the order of requests (and with it the
    history) is the seed's, not the thread scheduler's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        from concurrent.futures import Future

        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except SimCrash:
            raise  # the process dies here, not later when the result is read
        except BaseException as e:  # noqa: BLE001 - the future reports it, as a pool's does
            future.set_exception(e)
        return future


class _SimSourceModule:
    """What ``sources.source_module`` returns in the world: the modelled extraction."""

    extract = staticmethod(sim_source.extract)
    preflight_source = staticmethod(sim_source.preflight_source)


class _Pins:
    """The world's busiest DuckDB files held open, as ``duckdb.connect`` inside the world.

    Opening a DuckDB database makes an instance (its catalog of built-in functions, its
    buffer pool): about 10 ms, and closing the last connection checkpoints it; deltaferry
    opens one per step, a hundred and more per history, which was most of a history's
    time. Inside the world every file is held by one connection (its pin), opened at its
    first use, and deltaferry's connections are cursors of it (DuckDB's own way to another
    connection to an open database, sharing its instance).

    What a real process's death would leave is kept: a simulated crash closes every cursor
    the dead process had (``crashed``), which rolls back what it had not committed, as the
    write-ahead log would on the next open; what it committed stays, as it would on disk.
    A lost home or replica lets go of its files first (``drop``). At the end of a process,
    at a seeded rate (``World.ended``), files nothing holds any more are closed (``release``),
    so the next one opens them from disk as a new process would. deltaferry itself deletes
    none of these files; should it ever, the next open stops the history with an error
    (the pin would go on serving the deleted file). Not modelled: the
    write-ahead log's replay itself (DuckDB's; ``tests/test_replica_wal.py`` and the
    real-process chaos suite open files a killed process left), and the per-process file
    lock (a second process is ``World.race``'s other home). Of ``read_only``, what DuckDB
    refuses within one process is: opening a file in one mode while a connection in the
    other is open (``_same_configuration``); a write through a read-only connection is not
    refused here, but by the real suites."""

    def __init__(self, real: Callable[..., Any], held: Callable[[str], bool]) -> None:
        self.real = real
        self.held = held
        self.pins: dict[str, tuple[duckdb.DuckDBPyConnection, int]] = {}  # path: (pin, inode)
        self.handed: list[tuple[str, duckdb.DuckDBPyConnection, bool]] = []  # path, cursor, read_only

    def connect(self, database: Any = ":memory:", read_only: bool = False, config: Any = None, **kw: Any) -> Any:
        path = str(database) if isinstance(database, (str, Path)) else ""
        if not path or path.startswith(":memory:") or config or kw:
            return self.real(database, read_only=read_only, config=config or {}, **kw)
        key = os.path.realpath(path)
        if not self.held(key) or (read_only and not os.path.exists(key)):
            return self.real(database, read_only=read_only)  # as it is (a missing file: DuckDB's error)
        pinned = self.pins.get(key)
        if pinned is not None and pinned[1] != _inode(key):
            raise AssertionError(f"{key} was deleted or replaced behind the world's pin (``_Pins``)")
        if pinned is None:
            con = self.real(key)
            pinned = self.pins[key] = (con, os.stat(key).st_ino)
        self._same_configuration(key, read_only)
        con = pinned[0].cursor()
        self.handed.append((key, con, read_only))
        return con

    def _same_configuration(self, key: str, read_only: bool) -> None:
        """As DuckDB refuses, in one process, a connection to a file that process has open
        in the other mode (read-only against read-write): the world's processes share the
        pins, so the mode of the connections still open is checked here."""
        if all(ro == read_only for k, _, ro in self.handed if k == key):
            return
        self.handed = [h for h in self.handed if h[0] != key or _is_open(h[1])]
        if any(ro != read_only for k, _, ro in self.handed if k == key):
            raise duckdb.ConnectionException(
                "Connection Error: Can't open a connection to same database file with a "
                "different configuration than existing connections"
            )

    def crashed(self, under: Path) -> None:
        """The process that used the files under ``under`` died: its connections go."""
        root = os.path.realpath(under)
        keep = []
        for held in self.handed:
            if _under(held[0], root):
                held[1].close()
            else:
                keep.append(held)
        self.handed = keep

    def drop(self, under: Path) -> None:
        """The files under ``under`` are about to be deleted (or replaced): let go of them."""
        self.crashed(under)
        root = os.path.realpath(under)
        for key in [k for k in self.pins if _under(k, root)]:
            self.pins.pop(key)[0].close()

    def release(self, under: Path) -> bool:
        """Close the files under ``under`` if nothing holds a connection to them any more
        (as DuckDB closes an instance, checkpointing it, with its last connection); True
        when closed. A connection something still holds (a failed run's error) keeps them
        open, as it would keep the instance in a long-lived process."""
        root = os.path.realpath(under)
        live = [h for h in self.handed if not _under(h[0], root) or _is_open(h[1])]
        self.handed = live
        if any(_under(h[0], root) for h in live):
            return False
        for key in [k for k in self.pins if _under(k, root)]:
            self.pins.pop(key)[0].close()
        return True

    def close(self) -> None:
        for _, con, _ in self.handed:
            con.close()
        for pin, _ in self.pins.values():
            pin.close()
        self.handed, self.pins = [], {}


def _is_open(con: duckdb.DuckDBPyConnection) -> bool:
    try:
        con.execute("SELECT 1")
    except duckdb.ConnectionException:  # closed
        return False
    except duckdb.Error:  # open, in a failed transaction
        return True
    return True


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


@contextmanager
def _patched(world: World) -> Iterator[None]:
    """Point deltaferry's surroundings at the world: the lake, the source, the clock, ids,
    failpoints, the upload pool (inline: threads would make the order of requests, and so
    the history, depend on the scheduler); and the environment (home, retries)."""
    import deltaferry.commit
    import deltaferry.hlc
    import deltaferry.oplog
    import deltaferry.runbook
    import deltaferry.statedb
    import destinations.lake
    import sources
    import sources.load
    import sources.pipeline

    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, name: str, value: Any) -> None:
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    for package in ("deltaferry", "destinations"):  # a module imported later would keep
        for info in pkgutil.walk_packages(  # this world's lake and clock for good
            importlib.import_module(package).__path__, f"{package}."
        ):
            importlib.import_module(info.name)
    original_open = destinations.lake.open_lake
    original_now = deltaferry.statedb.now
    for mod in list(sys.modules.values()):
        name = getattr(mod, "__name__", "") or ""
        if not name.startswith(("deltaferry", "destinations", "flows", "sources")):
            continue
        for attr, value in list(vars(mod).items()):
            if value is original_open:
                patch(mod, attr, world.open_lake)
            elif value is original_now:
                patch(mod, attr, world.clock)
    patch(sources, "source_module", lambda job: _SimSourceModule)
    patch(sources.load, "stage_tombstones", sim_source.stage_tombstones)
    patch(sources.pipeline, "pipeline_for", lambda job: (None, None))
    patch(deltaferry.runbook, "_drop_staged", sim_source.drop_staged)
    patch(deltaferry.commit, "ThreadPoolExecutor", _InlineExecutor)
    patch(deltaferry.oplog, "uuid", world)  # run ids: ``uuid.uuid4().hex`` -> world.uuid4
    patch(deltaferry.hlc, "wall_ms", world.wall_ms)  # each producer's (skewed) clock
    patch(duckdb, "connect", world.pins.connect)  # the files held open (``_Pins``)
    env = {
        "DELTAFERRY_HOME": str(world.site.home),
        "DELTAFERRY_STEP_RETRIES": str(RETRIES),
    }
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    failpoints.set_hook(world.fault_point)
    global _current
    _current = world
    try:
        yield
    finally:
        _current = None
        failpoints.set_hook(None)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
        world.pins.close()


class World:
    """A seeded world: the source, the lake (and a second one a producer may be pointed at
    by mistake), one producer home, one reader's replica, the faults' odds, and the oracle's
    archive of everything the lake ever held."""

    def __init__(self, seed: int, root: Path, multi: bool | None = None) -> None:
        """``multi``: several producers (True: two, or three as the seed draws it) or one
        (False); None: as the seed draws it."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.root = root
        self.now = 1000
        self.ids = 0
        self.loads = 0
        self.stats = Stats(histories=1)
        # several producers of the job (``multi_producer``), or one
        multi_rng = random.Random(f"{seed}/multi")
        drawn = multi_rng.random() < P_MULTI
        self.multi = drawn if multi is None else multi
        self.multi_rng = multi_rng
        self.stats.multi = int(self.multi)
        if self.multi:
            third = random.Random(f"{seed}/third").random() < P_THIRD
            self.sites = {
                name: Site(name, Source.empty(self, rev=i * 1_000_000), root / f"home-{name}",
                           multi_rng.choice(SKEWS))
                for i, name in enumerate(PRODUCERS[: 3 if third else 2])
            }  # fmt: skip
        else:
            self.sites = {None: Site(None, Source.empty(self), root / "home")}
        self.site = next(iter(self.sites.values()))
        self.lake = SimStore(self, "lake")
        self.other = SimStore(self, "other")
        self.producer_lake = self.lake
        self.step_no = 0
        self.trace: list[str] = []
        rng = self.rng
        # the faults' odds, per history: some histories are calm, some stormy
        self.p_fail = rng.choice((0.0, 0.02, 0.08))
        self.p_lost_ack = rng.choice((0.0, 0.02, 0.06))
        self.p_crash = rng.choice((0.0, 0.01, 0.04))  # at each request
        # at each commit point (a failpoint): the places a crash matters most, so more often
        self.p_crash_point = rng.choice((0.0, 0.05, 0.15))
        self.listing_chaos = rng.random() < 0.5
        self.faults_on = True
        self.in_pull = False
        self.max_batch_rows = rng.choice((1, 2, 3, 5, 1000))
        self.rows_per_file = rng.choice((1, 2, 7, 1000))
        # the oracle's archive: every manifest (by sha256) and object ever seen
        self.archive: dict[str, bytes] = {}
        self.objects_ever: dict[str, bytes] = {}
        # tables whose newest manifest the lake lost (each site's ``lost_tips``: until the
        # producer agrees with the lake again, republished or adopted over), and until the
        # reader pulled again
        self.reader_behind: set[str] = set()
        self.rebuild_replica = False  # the producer was reset: the reader starts anew
        self.busy = False  # another runner holds the job's lock (``second_runner``)
        self._race: _Race | None = None
        # the last failed run's error, kept as Prefect keeps a failed state's (so whatever
        # the error holds on to stays alive into the next run, as in a long-lived worker)
        self.last_exception: BaseException | None = None
        self.last_error = ""
        self._changes_cache: dict[str, list[tuple[tuple, tuple, str]]] = {}
        self.replica = root / "replica.duckdb"
        # a replica made at the calm end in one pull: equal to the one pulled step by step
        self.fresh_replica = root / "fresh.duckdb"
        # half the readers keep their record in the lake (consumers/), which producers read
        self.consumer = "sim-reader" if rng.random() < 0.5 else None
        # contract versions: drawn from a generator of their own, so a history without a
        # contract change is the same history it was before they were modelled
        self.contract_rng = random.Random(f"{seed}/contracts")
        self.p_upgrade = self.contract_rng.choice((0.0, 0.0, 0.05, 0.15))  # at each step
        if self.multi:  # producers at different versions of a table: not built (README)
            self.p_upgrade = 0.0
        self.contract_v = {"producer": 1, "reader": 1}  # items's version in each one's jobs file
        self.pins = _Pins(duckdb.connect, self._held)
        # at a process's end its files are let go of (closed: checkpointed) at this rate, so
        # that the next process opens them from disk, as every process did before the pins;
        # drawn from a generator of its own, so the histories' other draws are unchanged
        self.pin_rng = random.Random(f"{seed}/pins")
        self.p_reopen = 0.25

    # --- the producer the world is acting as (``site``) ---------------------------------
    @property
    def source(self) -> Source:
        return self.site.source

    @property
    def producers(self) -> list[str]:
        """The producer ids of a several-producer history (two or three), in id order."""
        return [name for name in self.sites if name is not None]

    def act_as(self, site: Site) -> None:
        self.site = site
        os.environ["DELTAFERRY_HOME"] = str(site.home)

    def _pick_site(self) -> None:
        if self.multi:
            self.act_as(self.sites[self.rng.choice(self.producers)])

    def step_clock(self) -> None:
        """A producer's clock is set anew (an NTP step, a VM restored): often backwards,
        below what it stamped before; its next batch must still order after its last."""
        site = self.sites[self.multi_rng.choice(self.producers)]
        old, site.skew = site.skew, self.multi_rng.choice((*SKEWS, -7200, -86400))
        self._fault("producer clock stepped")
        self.trace.append(f"{self.step_no}: producer {site.name}'s clock stepped {site.skew - old:+d} s")

    def wall_ms(self) -> int:
        """``deltaferry/hlc.py:wall_ms`` of the producer running now: the world's clock
        plus its site's skew."""
        return (self.now + self.site.skew) * 1000 + int(sim_source.EPOCH.timestamp() * 1000)

    def _held(self, path: str) -> bool:
        """The files the world holds open (``_Pins``): the producer's state and staging, and
        the replica: those deltaferry opens at every step. Others (an adopted chain's
        baseline, held-row files) are opened as they are, one instance an open: deltaferry
        ATTACHes them from another database, which a file held open here would refuse."""
        return Path(path).name in ("state.duckdb", "staging.duckdb") or path in (
            os.path.realpath(self.replica), os.path.realpath(self.fresh_replica)
        )

    # --- the world's clock and ids -------------------------------------------------
    def clock(self) -> Any:
        import datetime as dt

        return sim_source.EPOCH + dt.timedelta(seconds=self.now)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def new_id(self) -> str:
        self.ids += 1
        return f"sim{self.ids:08d}"

    def new_load_id(self) -> str:
        self.loads += 1
        return f"{1_800_000_000 + self.now}.{self.loads:06d}"

    # --- the world's surroundings --------------------------------------------------
    def open_lake(self, url: str, base: Any = None) -> SimStore:
        return self.producer_lake

    def _fault(self, kind: str) -> None:
        self.stats.faults[kind] += 1
        self.trace.append(f"  fault {kind}")

    def fault_point(self, name: str) -> None:
        """A failpoint (or a point of the modelled source): the process may die here."""
        self._switch()
        if self.faults_on and self.rng.random() < self.p_crash_point:
            self._fault(f"crash at {name}")
            raise SimCrash(name)

    def before_request(self, store: SimStore, op: str, key: str) -> None:
        self._switch()
        if not self.faults_on:
            return
        r = self.rng.random()
        if r < self.p_crash:
            self._fault(f"crash before {op}")
            raise SimCrash(f"before {op} {key}")
        if r < self.p_crash + self.p_fail:
            kind = self.rng.choice(("timeout", "503 SlowDown", "500 InternalError", "connection reset"))
            self._fault(f"{kind} before {op}")
            raise TransientError(f"lake {store.url}: {op} {key}: {kind} (simulated)")

    def after_request(self, store: SimStore, op: str, key: str) -> None:
        if not self.faults_on or op in ("get", "list"):
            return
        r = self.rng.random()
        if r < self.p_crash:
            self._fault(f"crash after {op}")
            raise SimCrash(f"after {op} {key}")
        if r < self.p_crash + self.p_lost_ack:
            self._fault(f"lost acknowledgement of {op}")
            raise TransientError(f"lake {store.url}: {op} {key}: read timeout (simulated)")

    def listing(self, store: SimStore, keys: list[str]) -> list[str]:
        if not (self.faults_on and self.in_pull and self.listing_chaos and len(keys) > 1):
            return keys
        if self.rng.random() < 0.5:
            return keys
        out = keys + self.rng.sample(keys, self.rng.randint(1, len(keys)))
        self.rng.shuffle(out)
        self._fault("listing reordered and repeated")
        return out

    # --- the history -----------------------------------------------------------------
    def job(self, holder: str = "producer") -> Any:
        """The job as the producer's jobs file has it (``holder="reader"``: the reader's,
        which differs in ``items``'s contract until both moved to v2)."""
        from deltaferry.config import load_job

        me = self.site.name if holder == "producer" else None
        path = self.root / (f"{holder}-{me}.toml" if me else f"{holder}.toml")
        if not path.exists():
            producers = ""
            if self.multi:
                # (a reader names itself too: the job's check asks every holder for an id)
                producers = f'multi_producer = true\nproducer_id = "{me or "reader"}"\n'
            path.write_text(
                JOBS_TOML.format(
                    max_batch_rows=self.max_batch_rows,
                    rows_per_file=self.rows_per_file,
                    items_contract=ITEMS_CONTRACT[self.contract_v[holder]],
                    producers=producers,
                )
            )
        return load_job(JOB, path)

    def upgrade_contract(self, holder: str) -> None:
        """The producer's or the reader's jobs file moves ``items`` to its contract's chain
        (v1, v2), as a deploy of new code does between runs."""
        if self.contract_v[holder] == 2:
            return
        self.contract_v[holder] = 2
        for path in self.root.glob(f"{holder}*.toml"):  # (each producer's, with several)
            path.unlink()
        self.site.quiet = False
        self._fault(f"{holder}'s contract moved to v2")
        self.trace.append(f"{self.step_no}: the {holder}'s contract for items moved to v2")

    def run(self, steps: int) -> Stats:
        """Run the history: ``steps`` seeded actions, then a calm end that must converge."""
        with _patched(self):
            try:
                for _ in range(steps):
                    self.step_no += 1
                    self.stats.steps += 1
                    self.now += self.rng.randint(1, 120)
                    if self.multi and self.multi_rng.random() < 0.08:
                        self.step_clock()
                    if self.contract_rng.random() < self.p_upgrade:
                        self.upgrade_contract(self.contract_rng.choice(("producer", "reader")))
                    self._action()
                    self.check_lake()
                self.converge()
            except Violation as e:
                self.stats.failures.append(f"seed {self.seed}: {e}")
        return self.stats

    def _action(self) -> None:
        r = self.rng.random()
        self._pick_site()  # whose source, run, home or chain (with several producers)
        if r < 0.33:
            n = self.source.mutate()
            self.site.quiet = False
            self.trace.append(f"{self.step_no}: source{_of(self.site.name)}: {n} write(s)")
        elif r < 0.63:
            self.producer_run()
        elif r < 0.83:
            if self.multi and r >= 0.76:
                self.override()
            else:
                self.pull()
        elif r < 0.88:
            self.lose_tip()
        elif r < 0.92:
            self.wipe_home()
        elif r < 0.95:
            self.wrong_lake_run()
        elif r < 0.97:
            self.second_runner()
        else:
            self.race()

    # --- actions ---------------------------------------------------------------------
    def producer_run(self, lake: SimStore | None = None) -> str:
        """One run of the job, the flow's steps in order (``deltaferry/run.py:sync_steps``),
        each retried on TransientError as the flow's tasks are. Returns ``ok``, ``crash``
        or the error's class name; errors a run may meet are answered as the README's
        table of errors tells an operator to."""

        store = lake or self.lake
        self.producer_lake = store
        quiet = self.site.quiet and store is self.lake
        before = dict(store.objects)
        ever = self._stamping()
        try:
            outcome = self._run_once(f"producer {self.site.name} run" if self.multi else "producer run")
        finally:
            self.producer_lake = self.lake
        if quiet and store.objects != before:
            new = sorted(set(store.objects) - set(before))
            self._fail(f"a run with nothing to do wrote {new[:5]}")
        if store is self.lake:
            self.check_lake()
            self._check_causality(ever)
            if outcome == "ok":
                self.site.floor.clear()  # nothing planned is left: the next run stamps anew
                self.check_published()
                self.site.snapshot = dict(self.lake.objects)
                self.site.quiet = True
                self.site.lost_tips.clear()  # every table agreed with the lake
                self.site.raced = False
            else:
                self.site.quiet = False
                self.answer(outcome)
        return outcome

    def _run_once(self, who: str) -> str:
        """The run itself: ``ok``, ``crash`` or the error's class name."""
        from deltaferry.context import job_lock
        from deltaferry.run import open_run, recorded, sync_steps

        self.stats.runs += 1
        outcome = "ok"
        job = self.job()
        try:
            with job_lock(job.name):
                ctx = open_run(job)
                steps = _Steps(ctx, self)
                ctx.attempt = lambda: steps.attempt
                ctx.max_attempts = 1 + RETRIES
                with recorded(ctx) as summary:
                    sync_steps(ctx, summary, steps)
        except SimCrash as e:
            outcome = "crash"
            self.stats.crashes += 1
            self.trace.append(f"{self.step_no}: {who} crashed {e}")
        except DeltaferryError as e:
            outcome = type(e).__name__
            self.last_exception, self.last_error = e, str(e)
            self._named(e, who)
            self.trace.append(f"{self.step_no}: {who}: {outcome}: {e}")
        except Exception as e:  # noqa: BLE001 - what the invariant is about
            self._fail(f"{who} raised an unexplained {type(e).__name__}: {e}")
        finally:
            self.ended(Path(os.environ["DELTAFERRY_HOME"]), crashed=outcome == "crash")
        if outcome == "ok":
            self.trace.append(f"{self.step_no}: {who} ok")
        return outcome

    def ended(self, under: Path, *, crashed: bool) -> None:
        """A process that used the files under ``under`` ended: a crashed one's connections
        go (``_Pins.crashed``); at ``p_reopen``, its files are closed (checkpointed) too, so
        the next process opens them from disk, replaying what the last one left."""
        if crashed:
            self.pins.crashed(under)
            gc.collect()
        if self.pin_rng.random() < self.p_reopen and self.pins.release(under):
            self.stats.reopens += 1

    def answer(self, outcome: str) -> None:
        """What an operator does about a failed run (README, "Errors and what to do")."""
        from deltaferry.runbook import republish_lost, reset_table

        expected = {"crash", "TransientError", "LakeMismatchError"}
        if self.busy:
            expected.add("JobBusyError")
        if self.site.raced:  # a manifest the zombie stored at this producer's planned batch
            expected.add("ConflictError")
        if outcome not in expected:
            self._fail(f"a producer run failed with {outcome}, which no injected fault explains: {self.last_error}")
        if outcome != "LakeMismatchError":
            return
        named = set(re.findall(r"table '(\w+)'", self.last_error))
        if self.site.raced and "is ahead of this producer" in self.last_error:
            # README: another host published; stop it (the race is over), reset, run again
            job = self.job()
            for t in job.tables:
                if t.name in named:
                    if not self._operator(reset_table, job, t, "simulated: a restored home published meanwhile"):
                        return
                    self.trace.append(f"{self.step_no}: operator: reset {t.name} after the race")
            return
        if not self.site.lost_tips or not named <= self.site.lost_tips:
            self._fail(
                f"the producer found the lake disagreeing with its checkpoint for {sorted(named)}, "
                f"but the lake lost nothing there (lost: {sorted(self.site.lost_tips)})"
            )
        job = self.job()
        for t in job.tables:
            if t.name not in self.site.lost_tips:
                continue
            try:
                if not self._operator(republish_lost, job, t, "simulated: the lake lost its newest manifest"):
                    return
                self.trace.append(f"{self.step_no}: operator: republished {t.name}")
            except DeltaferryError as e:  # cannot be rebuilt (the error names reset): reset
                self._named(e, "republish")
                self.trace.append(f"{self.step_no}: operator: cannot republish {t.name} ({e}); reset")
                if not self._operator(reset_table, job, t, "simulated: lost batches cannot be rebuilt"):
                    return
                self.rebuild_replica = True
            self.site.lost_tips.discard(t.name)
        self.check_lake()

    def _operator(self, act: Callable[..., Any], *args: Any) -> bool:
        """An operator's command (``republish``, ``reset``); False when a crash or a
        transient error ended it (the operator tries again after the next failed run).
        Other errors are the caller's."""
        try:
            act(*args)
        except SimCrash:
            self.stats.crashes += 1
            self.ended(Path(os.environ["DELTAFERRY_HOME"]), crashed=True)
            return False
        except TransientError:
            return False
        return True

    def pull(self) -> str:
        """One pull of the reader's replica (listings may come reordered and repeated)."""
        from deltaferry.replica import pull

        self.stats.pulls += 1
        if self.rebuild_replica:  # the producer was reset past what the replica holds
            self.pins.drop(self.replica)
            self.replica.unlink(missing_ok=True)
            self.rebuild_replica = False
        outcome = "ok"
        self.in_pull = True
        try:
            pull(self.job("reader"), self.lake, self.replica, consumer=self.consumer)
        except SimCrash as e:
            outcome = "crash"
            self.stats.crashes += 1
            self.trace.append(f"{self.step_no}: pull crashed {e}")
        except DeltaferryError as e:
            outcome = type(e).__name__
            self._named(e, "pull")
            parts = getattr(e, "failures", None) or [e]  # PullFailed: each table's error
            newer = self.contract_v["producer"] > self.contract_v["reader"]
            if not all(
                isinstance(x, (TransientError, VerificationError))
                or (newer and type(x) is VersionError and "table 'items'" in str(x))
                for x in parts
            ):
                self._fail(f"pull failed with {outcome}, which no injected fault explains: {e}")
            self.trace.append(f"{self.step_no}: pull: {outcome}: {e}")
            if any(isinstance(x, VersionError) for x in parts):
                # README: a strict reader that meets a newer version recovers by upgrading
                self.trace.append(f"{self.step_no}: operator: the reader upgrades its contract")
                self.upgrade_contract("reader")
            if any(isinstance(x, VerificationError) for x in parts):
                named = set(re.findall(r"table '(\w+)'", str(e)))
                if not self.reader_behind or not named <= self.reader_behind:
                    self._fail(f"pull stopped though the lake lost nothing there: {e}")
                if "new replica" in str(e):  # the lost batch was published anew: rebuild
                    self.rebuild_replica = True
                    self.trace.append(f"{self.step_no}: operator: the reader rebuilds its replica")
        except Exception as e:  # noqa: BLE001
            self._fail(f"pull raised an unexplained {type(e).__name__}: {e}")
        finally:
            self.in_pull = False
            self.ended(self.replica, crashed=outcome == "crash")
        if outcome == "ok":
            self.trace.append(f"{self.step_no}: pull ok")
            self.reader_behind.clear()
        self.check_replica()
        return outcome

    def override(self) -> None:
        """An operator's ``deltaferry conflicts override`` of a key some producer published:
        pin it to a producer that has, to a delete, or remove its pin (README, "Several
        producers"); the request may fail or crash as any other."""
        from deltaferry.merge_tables import key_text
        from deltaferry.overrides import write_override

        t = self.rng.choice(sorted(SCHEMAS))
        keys = sorted(
            {k for p in self.sites for _, b in self._chain(self.lake, t, p) for k, _, _ in self._changes(b)},
            key=repr,
        )
        if not keys:
            return
        key = self.rng.choice(keys)
        r = self.rng.random()
        producer = self.rng.choice(self.producers) if r < 0.4 else None
        if producer and not _batches(self.lake, t, producer):  # one that has published
            producer = next(p for p in self.producers if _batches(self.lake, t, p))
        action = "pin" if r < 0.8 else "remove"
        value = None
        if 0.4 <= r < 0.6:  # a row typed in (``--value``): the whole row but the key
            stamp = self.clock().isoformat()
            value = {"rev": 900_000_000 + self.step_no, "updated_at": stamp}
            if t == "items":
                value |= {"name": self.rng.choice(("pinned", "Zoë", "")), "amount": self.rng.randint(-9, 9), "deleted_at": None}
            else:
                value |= {"val": self.rng.randint(-5, 5)}
        delete = action == "pin" and producer is None and value is None
        what = (
            f"pinned to {producer}" if producer else f"pinned to {value}" if value
            else "pinned to a delete" if delete else "pin removed"
        )  # fmt: skip
        self._fault("conflict override")
        try:
            # as the operator types it (``conflicts override --key``): values joined by ','
            values = [str(v) for v in key]
            typed = json.dumps(values, ensure_ascii=False) if any("," in v for v in values) else ",".join(values)
            write_override(
                self.lake, JOB, t, key=key_text(list(SCHEMAS[t]["key"]), typed), action=action, producer=producer,
                value=value, delete=delete, by="sim-operator", reason="simulated",
            )  # fmt: skip
            self.trace.append(f"{self.step_no}: operator: table {t} key {key} {what}")
        except SimCrash:
            self.stats.crashes += 1
            self.trace.append(f"{self.step_no}: override crashed")
        except TransientError as e:
            self.trace.append(f"{self.step_no}: override: TransientError: {e}")
        except DeltaferryError as e:
            self._named(e, "override")
            self._fail(f"an override failed with {type(e).__name__}, which no injected fault explains: {e}")
        self.check_lake()

    def lose_tip(self) -> None:
        tables = [t for t in SCHEMAS if self._head(t) > 0]
        if not tables:
            return
        t = self.rng.choice(tables)
        n = self._head(t)
        key = _manifest_key(t, n, self.site.name)
        del self.lake.objects[key]
        for site in self.sites.values():  # what a producer sees of the others may go back
            if t in site.floor:
                site.floor[t] = min(site.floor[t], self._others_newest_hlc(t, site.name))
        self.site.lost_tips.add(t)
        self.reader_behind.add(t)
        self.site.quiet = False
        self._fault("lake lost its newest manifest")
        self.trace.append(f"{self.step_no}: the lake lost {key}")

    def wipe_home(self) -> None:
        gc.collect()
        self.pins.drop(self.site.home)
        shutil.rmtree(self.site.home, ignore_errors=True)
        self.site.quiet = False
        self._fault("local state lost")
        self.trace.append(f"{self.step_no}: the producer's home was lost")

    def wrong_lake_run(self) -> None:
        if not self._checkpointed():
            return  # a producer with no checkpoint adopts whatever lake it is given
        if self._behind_checkpoint(self.site.snapshot) and self.rng.random() < 0.5:
            self.other.objects = dict(self.site.snapshot)  # an older copy of this very lake
            self._fault("producer pointed at a stale copy of its lake")
        else:
            self.other.objects = {}
            self._fault("producer pointed at a different lake")
        before = dict(self.other.objects)
        outcome = self.producer_run(self.other)
        self.trace.append(f"{self.step_no}: run against the wrong lake: {outcome}")
        if self.other.objects != before:
            self._fail(f"a producer pointed at a different lake wrote {sorted(set(self.other.objects) - set(before))[:5]}")
        if outcome not in ("LakeMismatchError", "crash", "TransientError"):
            self._fail(f"a producer pointed at a different lake did not stop on the lake-head check: {outcome}")
        self.site.quiet = False

    def _others_newest_hlc(self, table: str, me: str | None) -> int:
        """The newest logical timestamp the producers but ``me`` hold in their chains of ``table``."""
        out = 0
        for name in self.sites:
            if name != me:
                for n in _batches(self.lake, table, name):
                    out = max(out, json.loads(self.lake.objects[_manifest_key(table, n, name)])["hlc"])
        return out

    def _stamping(self) -> set[str]:
        """Before a run of the site: the objects seen so far, and the other producers'
        newest logical time as the floor of what it may stamp (``_check_causality``)."""
        if self.multi:
            for t in SCHEMAS:
                self.site.floor.setdefault(t, self._others_newest_hlc(t, self.site.name))
        return set(self.objects_ever)

    def _check_causality(self, ever: set[str]) -> None:
        """Every manifest the run stored for the first time orders after what the other
        producers had published when the producer could first have stamped it (README,
        "Several producers": a batch published after a site saw another's always orders
        after it, whatever the two wall clocks say). A batch is stamped when it is planned,
        and a plan outlives a failed run, so that moment is bounded below by the start of
        the site's first run since its last ok one (``Site.floor``, per table)."""
        if not self.multi:
            return
        mine = f"/producers/{self.site.name}/manifests/"
        for key in sorted(set(self.lake.objects) - ever):
            if mine in key:
                m = json.loads(self.lake.objects[key])
                floor = self.site.floor.get(m["table"], 0)
                if m["hlc"] <= floor:
                    self._fail(
                        f"table {m['table']}: producer {self.site.name}'s batch {m['batch']} is stamped "
                        f"{m['hlc']}, not after {floor}, the newest batch of another producer it "
                        "could see"
                    )

    def _checkpoints(self) -> list[tuple[str, int, str | None]]:
        """The producer's checkpoints (table, batch, manifest sha256), read directly."""
        path = self.site.home / JOB / "state.duckdb"
        if not path.exists():
            return []
        con = duckdb.connect(str(path), read_only=True)
        try:
            return con.execute("SELECT tbl, batch, manifest_sha256 FROM checkpoints").fetchall()
        except duckdb.CatalogException:
            return []
        finally:
            con.close()

    def _behind_checkpoint(self, objects: dict[str, bytes]) -> bool:
        """Whether a lake holding ``objects`` disagrees with the producer's checkpoint for
        some table (its manifest at the checkpoint missing or other bytes): only such a
        lake must stop the producer; one that ends at its checkpoint is, to it, its lake."""
        for table, batch, digest in self._checkpoints():
            if batch:
                body = objects.get(_manifest_key(table, batch, self.site.name))
                if body is None or _sha(body) != digest:
                    return True
        return False

    def _checkpointed(self) -> bool:
        """Whether the producer's state holds a checkpoint past batch 0."""
        return any(batch for _, batch, _ in self._checkpoints())

    def race(self) -> None:
        """A zombie runner: the producer's home restored on a second host (a copy of it
        now), both running the job at once against the lake, their requests interleaved
        in an order the seed draws. Create-only manifests must let at most one of them
        publish each batch; the other stops with a named error; the lake stays whole."""
        home = self.site.home
        if not home.exists():
            return
        zombie = self.root / "zombie"
        self.pins.drop(zombie)
        shutil.rmtree(zombie, ignore_errors=True)
        shutil.copytree(home, zombie)
        self._fault("zombie runner from a restored home")
        ever = self._stamping()
        outcomes = self._interleave({"producer run": home, "zombie run": zombie})
        self.pins.drop(zombie)
        shutil.rmtree(zombie, ignore_errors=True)
        os.environ["DELTAFERRY_HOME"] = str(home)
        self.trace.append(f"{self.step_no}: race: {outcomes}")
        self.site.quiet = False
        self.site.raced = True
        self.check_lake()
        self._check_causality(ever)  # (the zombie stamps as the same producer)
        if "ok" in outcomes.values():  # one of them published everything the source has
            self.check_published()

    def _interleave(self, homes: dict[str, Path]) -> dict[str, str]:
        """Run the job once per home, each in a thread of its own; only one thread runs at a
        time, and at each request or failpoint the running one hands over to a runner the
        seed picks (``_switch``)."""
        import threading

        race = _Race(homes)
        self._race = race

        def body(name: str) -> None:
            race.go[name].acquire()
            race.local.name = name
            os.environ["DELTAFERRY_HOME"] = str(homes[name])
            try:
                race.outcomes[name] = self._run_once(name)
            except BaseException as e:  # noqa: BLE001 - raised again in the world's thread
                race.errors.append(e)
            finally:
                race.done.add(name)
                race.parked.release()

        threads = [threading.Thread(target=body, args=(n,), daemon=True) for n in race.names]
        for th in threads:
            th.start()
        try:
            while len(race.done) < len(race.names):
                name = self.rng.choice([n for n in race.names if n not in race.done])
                race.go[name].release()
                race.parked.acquire()
        finally:
            self._race = None
        for th in threads:
            th.join()
        if race.errors:
            raise race.errors[0]
        return race.outcomes

    def _switch(self) -> None:
        """Inside a race: the running runner stops here until the seed picks it again."""
        race = self._race
        name = getattr(race.local, "name", None) if race is not None else None
        if race is None or name is None:
            return
        race.parked.release()
        race.go[name].acquire()
        os.environ["DELTAFERRY_HOME"] = str(race.homes[name])

    def second_runner(self) -> None:
        """A second runner of the job starts while another holds it (the same home): it
        must stop at once with a one-line error naming the holder, writing nothing."""
        from deltaferry.context import job_lock

        self._fault("second runner of the job")
        before = dict(self.lake.objects)
        self.busy = True
        try:
            with job_lock(JOB):
                outcome = self.producer_run()
        finally:
            self.busy = False
        if outcome != "JobBusyError" or self.lake.objects != before:
            self._fail(f"a second runner of the job was not stopped by the first's lock: {outcome}")
        self.site.quiet = False

    def converge(self) -> None:
        """The calm end: no more faults. The producer must publish everything, the reader
        must reach the lake's head and equal the source, and a second pull change nothing."""
        self.faults_on = False
        self.trace.append("calm")
        for site in self.sites.values():
            self.act_as(site)
            for _ in range(3):
                if self.producer_run() == "ok":
                    break
            else:
                self._fail(f"the producer{_of(site.name)} did not recover once the faults stopped")
        for site in self.sites.values():  # no producer's run touched another's chain
            self.act_as(site)
            self.check_published()
        for _ in range(3):
            if self.pull() == "ok":
                break
        else:
            self._fail("the reader did not recover once the faults stopped")
        snapshot = self._replica_rows()
        if self.pull() != "ok" or self._replica_rows() != snapshot:
            self._fail("pulling again changed the replica")
        for t in SCHEMAS:
            got = snapshot.get(t, {})
            if self.multi:  # every source's chain is whole (each producer's run checked
                # it); the replica holds their merge
                prefix = f"{JOB}/{t}/overrides/"
                entries = [v for k, v in sorted(self.lake.objects.items()) if k.startswith(prefix)]
                want = self._merged({p: [b for _, b in self._chain(self.lake, t, p)] for p in self.sites}, entries)
            else:
                want = self.source.live(t)
            if got != want:
                self._fail(f"table {t}: the replica differs from the source: {_diff(got, want)}")
        if self.multi:
            self.stats.conflicts += self._conflicts()
        # the same lake pulled into a new replica at once (every chain whole, in the
        # order a listing gives): the table must not depend on when each batch arrived
        self._pull_into(self.fresh_replica)
        fresh = self._replica_rows(self.fresh_replica)
        for t in SCHEMAS:
            if fresh.get(t, {}) != snapshot.get(t, {}):
                self._fail(
                    f"table {t}: a replica pulled at once differs from the one pulled step by step: "
                    f"{_diff(fresh.get(t, {}), snapshot.get(t, {}))}"
                )

    def _conflicts(self) -> int:
        con = duckdb.connect(str(self.replica), read_only=True)
        try:
            return con.execute("SELECT count(*) FROM _deltaferry_conflicts").fetchone()[0]
        except duckdb.CatalogException:
            return 0
        finally:
            con.close()

    def _pull_into(self, replica: Path) -> None:
        """A pull with no fault and no reader's record, into ``replica``."""
        from deltaferry.replica import pull

        try:
            pull(self.job("reader"), self.lake, replica)
        except Exception as e:  # noqa: BLE001 - what the invariant is about
            self._fail(f"a pull into a new replica failed with no fault: {type(e).__name__}: {e}")
        finally:
            self.ended(replica, crashed=False)

    # --- invariants ------------------------------------------------------------------
    def _fail(self, what: str) -> None:
        tail = "\n".join(self.trace[-40:])
        raise Violation(
            f"{what}\n(step {self.step_no}; replay: DELTAFERRY_SIM_SEED_BASE={self.seed} DELTAFERRY_SIM_SEEDS=1 "
            ".venv/bin/python -m pytest -m simulation -s tests/test_simulation.py -k histories)"
            f"\nlast steps:\n{tail}"
        )

    def _named(self, e: BaseException, what: str) -> None:
        self.stats.errors[f"{what}: {type(e).__name__}"] += 1
        text = str(e)
        if "\n" in text.strip() or not (f"job '{JOB}'" in text or f"{JOB}/" in text):
            self._fail(f"{what} failed without a one-line error naming the job: {type(e).__name__}: {text!r}")

    def _head(self, table: str) -> int:
        """The lake's newest batch of ``table`` in the site's chain (0: none)."""
        return max(_batches(self.lake, table, self.site.name), default=0)

    def check_lake(self) -> None:
        """Chains unbroken; one manifest a batch; no object replaced; every file a manifest
        names is there with its sha256; no upsert of the same write in two batches."""
        self.stats.checks += 1
        if self.lake.replaced:  # a reader's record (consumers/) is the one mutable object
            replaced = [k for k in self.lake.replaced if "/consumers/" not in k]
            if any("/manifests/" in k for k in replaced):
                self._fail(f"a manifest was overwritten: {replaced}")
            if replaced:
                self._fail(f"an immutable object was replaced with other bytes: {replaced}")
        for k, v in self.lake.objects.items():
            self.objects_ever.setdefault(k, v)
            if "/manifests/" in k or "/overrides/" in k:
                self.archive[_sha(v)] = v
        for t, producer in self._chains():
            chain = self._chain(self.lake, t, producer)
            seen: dict[tuple, int] = {}
            for n, body in chain:
                m = json.loads(body)
                for f in m["files"]:
                    data = self.lake.objects.get(f["key"])
                    if data is None or _sha(data) != f["sha256"]:
                        self._fail(f"table {t} batch {n}: data object {f['key']} missing or not its sha256")
                for key, values, op in self._changes(body):
                    rev = values[0]
                    if op == "upsert":
                        if (key, rev) in seen:
                            self._fail(
                                f"table {t}{_of(producer)}: write rev {rev} of key {key} published twice "
                                f"(batches {seen[key, rev]} and {n})"
                            )
                        seen[key, rev] = n

    def _chains(self) -> list[tuple[str, str | None]]:
        """(table, producer) of every chain the lake may hold (producer None: the one)."""
        return [(t, p) for t in SCHEMAS for p in self.sites]

    def _chain(self, store: SimStore, table: str, producer: str | None = None) -> list[tuple[int, bytes]]:
        nums = _batches(store, table, producer)
        where = f"table {table}{_of(producer)}"
        if nums and nums != list(range(1, len(nums) + 1)):
            self._fail(f"{where}: the chain's batches are {nums}, not 1..{len(nums)}")
        out = []
        prev = None
        stamp = -1
        for n in nums:
            body = store.objects[_manifest_key(table, n, producer)]
            m = json.loads(body)
            if m["batch"] != n or m["prev_sha256"] != prev:
                self._fail(f"{where} batch {n}: the chain is broken (prev_sha256 {m['prev_sha256']}, want {prev})")
            if producer is not None:  # a producer's logical time only grows along its chain
                if m["hlc"] <= stamp:
                    self._fail(f"{where} batch {n}: stamped {m['hlc']}, not after its batch {n - 1} ({stamp})")
                stamp = m["hlc"]
            prev = _sha(body)
            out.append((n, body))
        return out

    def _changes(self, body: bytes) -> list[tuple[tuple, tuple, str]]:
        """A manifest's rows as (key, values, op), in ``_seq`` order, read from its objects
        (values: ``row_values``)."""
        cache = self._changes_cache
        digest = _sha(body)
        if digest in cache:
            return cache[digest]
        m = json.loads(body)
        key_cols = SCHEMAS[m["table"]]["key"]
        rows = []
        for f in m["files"]:
            data = self.objects_ever.get(f["key"])
            if data is None:
                self._fail(f"the oracle never saw data object {f['key']}")
            owned = pa.BufferOutputStream()  # a copy Arrow owns (why: delta.arrow_input)
            owned.write(data)
            rows += pq.read_table(pa.BufferReader(owned.getvalue())).to_pylist()
        rows.sort(key=lambda r: r["_seq"])
        out = [(tuple(r[c] for c in key_cols), row_values(m["table"], r), r["_op"]) for r in rows]
        cache[digest] = out
        return out

    def _fold(self, bodies: list[bytes]) -> dict[tuple, tuple]:
        live: dict[tuple, tuple] = {}
        for body in bodies:
            for key, values, op in self._changes(body):
                if op == "upsert":
                    live[key] = values
                else:
                    live.pop(key, None)
        return live

    def _merged(
        self,
        chains: dict[str | None, list[bytes]],
        overrides: list[bytes] | None = None,
        who: dict[tuple, str] | None = None,
    ) -> dict[tuple, tuple]:
        """The rule of several producers (README, "Several producers"), on its own: a key
        pinned by the newest override entry for it takes the pinned producer's newest
        version (the automatic winner when that producer has none) or a delete; otherwise,
        of every version of the key in the chains, the one with the later logical time
        wins, at the same time the one from the producer id that sorts last; a winning
        delete leaves no row. With one chain, the chain folded. ``who``, when given, gets
        each row's winning producer."""
        if list(chains) == [None]:
            return self._fold(chains[None])
        best: dict[tuple, tuple[tuple, str, tuple]] = {}
        newest: dict[tuple[tuple, str], tuple[int, str, tuple]] = {}  # (key, producer)
        for producer, bodies in chains.items():
            for body in bodies:
                hlc = json.loads(body)["hlc"]
                for key, values, op in self._changes(body):
                    rank = (hlc, producer or "")
                    if key not in best or rank >= best[key][0]:
                        best[key] = (rank, op, values)
                    mine = (key, producer or "")
                    if mine not in newest or hlc >= newest[mine][0]:
                        newest[mine] = (hlc, op, values)
        pins: dict[str, dict[str, Any]] = {}
        for body in overrides or []:
            entry = json.loads(body)
            pins[entry["key"]] = entry  # entries in number order: the newest is in force
        out = {}
        for key, ((_, producer), op, values) in best.items():
            pin = pins.get(_key_text(key))
            if pin is not None and pin["action"] == "pin":
                if pin["producer"] and (key, pin["producer"]) in newest:
                    _, op, values = newest[key, pin["producer"]]
                    producer = pin["producer"]
                elif pin["delete"]:
                    op = "delete"
                elif not pin["producer"]:  # pinned to a value: the row given, every column
                    op, values, producer = "upsert", _pinned_values(key, pin["table"], pin["value"]), "override"
            if op == "upsert":
                out[key] = values
                if who is not None:
                    who[key] = producer
        return out

    def _conflicts_of(self, table: str, chains: dict[str | None, list[bytes]], overrides: list[bytes]) -> set[tuple]:
        """The conflict records the README's definition ("Several producers", "A conflict
        is a concurrent edit") gives for these chains and override entries, on its own:
        ``(key text, producer, batch, replaced producer, replaced batch, rule)``. Every
        version of a key in (logical time, producer id) order; one replaced by the next
        from another producer, a different row (or a delete against a row), is a conflict
        unless the replacing batch's ``hlc_seen`` for the replaced producer is at or after
        the replaced version's time (a hand-off). A pin in force that gives a key another
        version than the automatic winner is one more record, over the automatic winner."""
        versions: dict[tuple, dict[tuple[str, int | None], tuple]] = {}
        for producer, bodies in chains.items():
            for body in bodies:
                m = json.loads(body)
                seen = m.get("hlc_seen") or {}
                for key, values, op in self._changes(body):  # a batch's last change of a key
                    row = values if op == "upsert" else None
                    versions.setdefault(key, {})[(producer or "", m["batch"])] = (m["hlc"], op, row, seen)
        out: set[tuple] = set()
        pins: dict[str, dict[str, Any]] = {}
        for body in overrides:
            entry = json.loads(body)
            pins[entry["key"]] = entry
        for key, vs in versions.items():
            text = _key_text(key)
            order = sorted(vs, key=lambda v: (vs[v][0], v[0]))
            for before, after in zip(order, order[1:]):
                (b_hlc, b_op, b_row, _), (a_hlc, a_op, a_row, a_seen) = vs[before], vs[after]
                if before[0] == after[0] or (b_op, b_row) == (a_op, a_row):
                    continue
                if a_seen.get(before[0], -1) >= b_hlc:
                    continue  # a hand-off: the replacing batch had seen the version
                rule = "later logical time" if a_hlc > b_hlc else "same logical time: higher producer id"
                out.add((text, after[0], after[1], before[0], before[1], rule))
            pin = pins.get(text)
            if pin is None or pin["action"] != "pin":
                continue
            auto = order[-1]
            if pin["producer"]:
                mine = [v for v in order if v[0] == pin["producer"]]
                if not mine or mine[-1] == auto:
                    continue  # no version to pin, or the pin gives what the rule gives
                pinned: tuple[str, int | None] = mine[-1]
            else:  # pinned to a value or a delete
                pinned = ("override", None)
            out.add((text, *pinned, *auto, f"manual override #{pin['n']}"))
        return out

    def _check_conflicts(self, table: str, chains: dict[str | None, list[bytes]], overrides: list[bytes]) -> None:
        """The replica's conflict records of ``table`` (``_deltaferry_conflicts``, read with
        plain SQL) are the ones the definition gives for what it applied: none missing (a
        decision not recorded), none extra, none stale."""
        want = self._conflicts_of(table, chains, overrides)
        con = duckdb.connect(str(self.replica), read_only=True)
        try:
            rows = con.execute(
                "SELECT key, winner_producer, winner_batch, loser_producer, loser_batch, rule"
                " FROM _deltaferry_conflicts WHERE tbl = ?",
                [table],
            ).fetchall()
        except duckdb.CatalogException:
            rows = []
        finally:
            con.close()
        got: set[tuple] = set()
        for *ids, rule in rows:
            # an override's record names who and why after its number: compared by number
            pinned = re.match(r"manual override #\d+", rule)
            got.add((*ids, pinned.group(0) if pinned else rule))
        if len(got) != len(rows):
            self._fail(f"table {table}: the replica recorded a conflict twice ({len(rows)} records, {len(got)} distinct)")
        if got != want:
            missing = sorted(want - got, key=repr)[:4]
            extra = sorted(got - want, key=repr)[:4]
            self._fail(f"table {table}: conflict records differ from the definition: missing {missing}, extra {extra}")

    def check_published(self) -> None:
        """After a run that ended ok: the site's chain holds its source, no more, no less."""
        self.stats.checks += 1
        for t in SCHEMAS:
            got = self._fold([b for _, b in self._chain(self.lake, t, self.site.name)])
            want = self.source.live(t)
            if got != want:
                self._fail(
                    f"table {t}{_of(self.site.name)}: after an ok run the lake differs from the "
                    f"source: {_diff(got, want)}"
                )

    def _replica_rows(self, replica: Path | None = None) -> dict[str, dict[tuple, tuple]]:
        """``{table: {key: row_values}}`` of the replica, read with plain SQL."""
        replica = replica or self.replica
        if not replica.exists():
            return {}
        con = duckdb.connect(str(replica), read_only=True)
        try:
            out: dict[str, dict[tuple, tuple]] = {}
            tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            for t, spec in SCHEMAS.items():
                if t not in tables:
                    continue
                key = spec["key"]
                cols = list(spec["columns"])
                sel = ", ".join(f'"{c}"' for c in cols)
                out[t] = {
                    tuple(row[c] for c in key): row_values(t, row)
                    for row in (dict(zip(cols, r)) for r in con.execute(f'SELECT {sel} FROM "{t}"').fetchall())
                }
            return out
        finally:
            con.close()

    def _replica_batches(self) -> dict[tuple[str, str | None], list[str]]:
        """``{(table, producer): [manifest sha256 of batch 1, 2, ...]}`` the replica applied
        (producer None: the one chain), read with plain SQL."""
        if not self.replica.exists():
            return {}
        con = duckdb.connect(str(self.replica), read_only=True)
        try:
            try:
                rows = con.execute(
                    "SELECT tbl, producer, batch, manifest_sha256 FROM _deltaferry_chains ORDER BY ALL"
                    if self.multi
                    else "SELECT tbl, NULL, batch, manifest_sha256 FROM _deltaferry_batches ORDER BY tbl, batch"
                ).fetchall()
            except duckdb.CatalogException:
                return {}
        finally:
            con.close()
        out: dict[tuple[str, str | None], list[str]] = {}
        for tbl, producer, batch, digest in rows:
            shas = out.setdefault((tbl, producer), [])
            if batch != len(shas) + 1:
                self._fail(f"table {tbl}{_of(producer)}: the replica applied batch {batch} after {len(shas)}")
            shas.append(digest)
        return out

    def _replica_producers(self, table: str) -> dict[tuple, str]:
        """``{key: _producer}`` of the replica's merged table: whose version won each key."""
        key = SCHEMAS[table]["key"]
        con = duckdb.connect(str(self.replica), read_only=True)
        try:
            sel = ", ".join(f'"{c}"' for c in key)
            rows = con.execute(f'SELECT {sel}, _producer FROM "{table}"').fetchall()
        except duckdb.CatalogException:
            return {}
        finally:
            con.close()
        return {tuple(r[:-1]): r[-1] for r in rows}

    def _replica_overrides(self, table: str) -> list[str]:
        """The sha256 of the override entries 1, 2, ... of ``table`` the replica applied."""
        if not self.multi or not self.replica.exists():
            return []
        con = duckdb.connect(str(self.replica), read_only=True)
        try:
            rows = con.execute(
                "SELECT n, sha256 FROM _deltaferry_overrides WHERE tbl = ? ORDER BY n", [table]
            ).fetchall()
        except duckdb.CatalogException:
            return []
        finally:
            con.close()
        if [n for n, _ in rows] != list(range(1, len(rows) + 1)):
            self._fail(f"table {table}: the replica applied override entries {[n for n, _ in rows]}")
        return [digest for _, digest in rows]

    def check_labels(self) -> None:
        """The replica holds its reader's version of ``items``: ``label`` (v2) only once
        the reader moved to v2, and then made from ``name`` on every row, whichever
        version each batch was published at (the reader upgrades older batches itself)."""
        if not self.replica.exists():
            return
        con = duckdb.connect(str(self.replica), read_only=True)
        try:
            cols = {r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'items'"
            ).fetchall()}
            rows = con.execute('SELECT id, name, label FROM "items"').fetchall() if "label" in cols else []
        finally:
            con.close()
        if "label" in cols and self.contract_v["reader"] == 1:
            self._fail("table items: the replica has v2's column label, but its reader reads v1")
        from tests.support.sim.contract import label_of

        wrong = [(i, n, lab) for i, n, lab in rows if lab != label_of(n)]
        if wrong:
            self._fail(f"table items: label is not made from name in the replica: {wrong[:5]}")

    def check_replica(self) -> None:
        """The replica equals the lake folded up to the batch it applied, whatever stopped
        the pull."""
        self.stats.checks += 1
        self.check_labels()
        applied = self._replica_batches()
        rows = self._replica_rows()
        for t in SCHEMAS:
            chains: dict[str | None, list[bytes]] = {}
            for producer in self.sites:
                bodies = chains[producer] = []
                for digest in applied.get((t, producer), []):
                    if digest not in self.archive:
                        self._fail(f"table {t}: the replica applied a manifest the lake never held ({digest[:16]})")
                    bodies.append(self.archive[digest])
            entries = []
            who: dict[tuple, str] = {}
            for digest in self._replica_overrides(t):
                if digest not in self.archive:
                    self._fail(f"table {t}: the replica applied an override the lake never held ({digest[:16]})")
                entries.append(self.archive[digest])
            want = self._merged(chains, entries, who)
            if self.multi:
                self._check_conflicts(t, chains, entries)
            got = rows.get(t, {})
            if self.multi and got == want and (won := self._replica_producers(t)) != who:
                wrong = sorted((k for k in who if won.get(k) != who[k]), key=repr)[:5]
                self._fail(f"table {t}: rows won by the wrong producer: {[(k, won.get(k), who[k]) for k in wrong]}")
            if got != want:
                at = ", ".join(f"{p or 'batch'} {len(b)}" for p, b in chains.items())
                at += f", override {len(entries)}" if entries else ""
                self._fail(
                    f"table {t}: the replica at {at} differs from the lake "
                    f"{'merged' if self.multi else 'folded'} to it: {_diff(got, want)}"
                )


class _Steps:
    """``deltaferry/run.py:Steps`` for the world: the flow's task bodies as plain calls,
    each retried on TransientError (up to 1 + RETRIES attempts) as the flow retries them."""

    def __init__(self, ctx: Any, world: World) -> None:
        self.ctx = ctx
        self.world = world
        self.attempt = 1

    def _retried(self, fn: Callable[[], Any]) -> Any:
        for attempt in range(1, RETRIES + 2):
            self.attempt = attempt
            try:
                return fn()
            except TransientError:
                if attempt > RETRIES:
                    raise
        raise AssertionError("unreachable")

    def agree(self) -> None:
        from deltaferry.agreement import agree_every_table

        self._retried(lambda: agree_every_table(self.ctx))

    def recover(self, t: Any) -> str | None:
        from deltaferry.commit import recover_table

        return self._retried(lambda: self.ctx.step("recover", lambda: recover_table(self.ctx, t), table=t.name))

    def recovered(self, t: Any, done: str | None, batch: int | None) -> None:
        pass

    def extract(self) -> Any:
        from deltaferry.extract import run_extract

        return self._retried(lambda: run_extract(self.ctx))

    def plan(self, t: Any) -> Any:
        from deltaferry.run import plan_logged

        self.attempt = 1
        return plan_logged(self.ctx, t)

    def upload(self, plan: Any, delta: Any) -> int:
        from deltaferry.commit import upload_parts

        ctx = self.ctx
        return self._retried(
            lambda: ctx.step("upload", lambda: upload_parts(ctx, plan, delta), table=plan.table, batch=plan.batch)
        )

    def manifest(self, plan: Any) -> str:
        from deltaferry.commit import put_manifest

        ctx = self.ctx
        return self._retried(
            lambda: ctx.step("manifest", lambda: put_manifest(ctx, plan), table=plan.table, batch=plan.batch)
        )

    def checkpoint(self, plan: Any) -> None:
        from deltaferry.commit import commit

        self.attempt = 1
        self.ctx.step("checkpoint", lambda: commit(self.ctx, plan), table=plan.table, batch=plan.batch)

    def published(self, plan: Any, delta: Any, sent: int) -> None:
        pass


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _chain_prefix(table: str, producer: str | None) -> str:
    """Where a chain's manifests are: the one chain, or a producer's (``multi_producer``)."""
    return f"{JOB}/{table}/producers/{producer}/manifests/" if producer else f"{JOB}/{table}/manifests/"


def _batches(store: SimStore, table: str, producer: str | None = None) -> list[int]:
    """The numbers of ``table``'s manifests ``store`` holds, ascending."""
    prefix = _chain_prefix(table, producer)
    return sorted(int(k[len(prefix) : -5]) for k in store.objects if k.startswith(prefix))


def _manifest_key(table: str, n: int, producer: str | None = None) -> str:
    return f"{_chain_prefix(table, producer)}{n:012d}.json"


def _pinned_values(key: tuple, table: str, value: dict[str, Any]) -> tuple:
    """``row_values`` of a row an override gives (JSON: timestamps as ISO text)."""
    import datetime as dt

    row = dict(zip(SCHEMAS[table]["key"], key))
    for c, v in value.items():
        row[c] = dt.datetime.fromisoformat(v) if c in ("updated_at", "deleted_at") and v else v
    return row_values(table, row)


def _key_text(key: tuple) -> str:
    """A key as the replica keeps it and an override entry names it (README, "Several
    producers"): one column as is, a composite key as a JSON array of its values as text,
    as DuckDB's ``to_json`` writes it (text beyond ASCII as is)."""
    if len(key) == 1:
        return str(key[0])
    return json.dumps([str(v) for v in key], separators=(",", ":"), ensure_ascii=False)


def _of(producer: str | None) -> str:
    return f" (producer {producer})" if producer else ""


def _diff(got: dict, want: dict) -> str:
    missing = sorted((k for k in want if k not in got), key=repr)[:5]
    extra = sorted((k for k in got if k not in want), key=repr)[:5]
    stale = sorted((k for k in want if k in got and got[k] != want[k]), key=repr)[:5]
    return (
        f"missing {missing}, extra (resurrected or never there) {extra}, "
        f"stale {[(k, got[k], want[k]) for k in stale]}"
    )


def row_values(table: str, row: dict[str, Any]) -> tuple:
    """A row's values as the oracle compares them: ``rev`` first, then every other column
    of the table but the key, timestamps as UTC microseconds (the lake and the replica may
    give them naive or aware)."""
    import datetime as dt

    out = []
    key = SCHEMAS[table]["key"]
    for c in ("rev", *(c for c in SCHEMAS[table]["columns"] if c not in key and c != "rev")):
        v = row.get(c)
        if isinstance(v, dt.datetime):
            v = v if v.tzinfo else v.replace(tzinfo=dt.UTC)
            v = round(v.timestamp() * 1_000_000)
        out.append(v)
    return tuple(out)


class _Race:
    """Two runners of one job at once (``World.race``): whose turn it is."""

    def __init__(self, homes: dict[str, Path]) -> None:
        import threading

        self.homes = homes
        self.names = sorted(homes)
        self.go = {n: threading.Semaphore(0) for n in self.names}
        self.parked = threading.Semaphore(0)
        self.local = threading.local()
        self.outcomes: dict[str, str] = {}
        self.errors: list[BaseException] = []
        self.done: set[str] = set()
