"""Property-based robustness of every RPC of both surfaces against a real server process.

Hypothesis sends arbitrary, hostile and huge requests to CreateCloneJob,
GetCloneJob, ListCloneJobs, CancelCloneJob and WatchCloneJob, and raw random
bytes as the serialized request of each. The Google surface on the same port is
fuzzed the same way: every served method of google.cloud.vmmigration.v1.VmMigration
(CreateCloneJob, GetCloneJob, ListCloneJobs, CancelCloneJob, GetMigratingVm,
ListMigratingVms) and of google.longrunning.Operations (GetOperation,
ListOperations, CancelOperation, WaitOperation, DeleteOperation), with hostile
names, page sizes and tokens, out-of-range enums and extreme WaitOperation
timeouts, and with raw random bytes. WaitOperation is also fuzzed against an
operation that stays open (on a second, idle server that runs no job), with a
short deadline that the wait must answer within.

Whatever it sends, the call must end within its deadline with a status other
than INTERNAL or UNKNOWN, every error the service makes must carry its
ErrorInfo (domain clonejob.v1), and the servers must keep serving. Afterwards
the file system shows that nothing was written outside the data directories
and that everything below targets/ has the documented layout.

CLONEJOB_FUZZ_EXAMPLES sets the number of cases of clonejob.v1 (default 3200),
split between its RPCs by fixed weights; the Google surface gets a further 16%
of that number, split between its methods likewise.
"""

from __future__ import annotations

import os
import re
import shutil
import string
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Importing Google's package puts the google.cloud.vmmigration.v1 messages in
# the default descriptor pool.
import google.cloud.vmmigration_v1  # noqa: F401
import grpc
import pytest
from clonejob_rpc import (
    ADAPTING,
    VM1,
    ZONE,
    State,
    create,
    disks_body,
    error_info,
    get,
    job_name,
    read_until,
    step_running,
    terminal,
    vm_body,
    watch,
)
from google.longrunning import operations_pb2
from google.protobuf import descriptor_pool, duration_pb2, message_factory
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clonejob_grpc import clone_job_pb2 as pb
from clonejob_grpc import clone_job_service_pb2 as spb

if TYPE_CHECKING:
    from conftest import Server, ServerPool

REPO = Path(__file__).resolve().parents[2]

# -- budget --

TOTAL_EXAMPLES = int(os.environ.get("CLONEJOB_FUZZ_EXAMPLES", "3200"))
WEIGHTS = {
    "create": 0.28,
    "get": 0.10,
    "list": 0.16,
    "cancel": 0.08,
    "watch": 0.13,
    "raw": 0.25,  # split between the five methods
    # The Google surface, on top: split by GOOGLE_SHARES, and evenly for raw bytes.
    "google": 0.12,
    "google_raw": 0.04,
}
DEADLINE = 15.0  # per call: generous for two noisy cores, far below a hang
# WaitOperation on the operation that stays open answers just before this.
PENDING_DEADLINE = 1.0
HELD_ID = "held-by-fuzz-fixture"  # the fault plan holds the jobs whose ids start so
KNOWN_ID = "known"
POOL_IDS = [f"fz-{i}" for i in range(30)]

# Codes that the service itself makes, each with exactly one ErrorInfo (AIP-193).
SERVICE_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
# Never acceptable: a bug (INTERNAL, UNKNOWN) or no answer in time.
FORBIDDEN = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
)

# -- the services --

CLONEJOB = "clonejob.v1.CloneJobService"
VMMIGRATION = "google.cloud.vmmigration.v1.VmMigration"
OPERATIONS = "google.longrunning.Operations"
SOURCE = VM1.rsplit("/migratingVms/", 1)[0]
LOCATION = SOURCE.rsplit("/sources/", 1)[0]
VM2 = f"{SOURCE}/migratingVms/vm2"  # a second VM of the source, so that its list has pages


def rpc(service: str, method: str) -> str:
    """A method's full path."""
    return f"/{service}/{method}"


def label(path: str) -> str:
    """How the counts name a method: clonejob.v1's by method alone, the others
    as `Service.Method`."""
    service, method = path[1:].split("/")
    return method if service == CLONEJOB else f"{service.rsplit('.', 1)[-1]}.{method}"


def google_type(name: str) -> Any:
    """A google.cloud.vmmigration.v1 message class (from the default pool)."""
    return message_factory.GetMessageClass(
        descriptor_pool.Default().FindMessageTypeByName(f"google.cloud.vmmigration.v1.{name}")
    )


GetMigratingVmRequest = google_type("GetMigratingVmRequest")
ListMigratingVmsRequest = google_type("ListMigratingVmsRequest")
Operation = operations_pb2.Operation
WAIT = rpc(OPERATIONS, "WaitOperation")
# Every served method of the Google surface, in the order fuzzed: operations are
# harvested from Create and Cancel first, and deleted last.
GOOGLE_SHARES = {
    rpc(VMMIGRATION, "CreateCloneJob"): 0.08,
    rpc(VMMIGRATION, "GetCloneJob"): 0.05,
    rpc(VMMIGRATION, "ListCloneJobs"): 0.07,
    rpc(VMMIGRATION, "CancelCloneJob"): 0.05,
    rpc(VMMIGRATION, "GetMigratingVm"): 0.14,
    rpc(VMMIGRATION, "ListMigratingVms"): 0.16,
    rpc(OPERATIONS, "GetOperation"): 0.09,
    rpc(OPERATIONS, "ListOperations"): 0.11,
    rpc(OPERATIONS, "CancelOperation"): 0.06,
    WAIT: 0.12,
    rpc(OPERATIONS, "DeleteOperation"): 0.07,
}


def examples(kind: str, share: float = 1.0) -> int:
    return max(1, round(TOTAL_EXAMPLES * WEIGHTS[kind] * share))


def fuzz_settings(kind: str, share: float = 1.0) -> settings:
    return settings(
        max_examples=examples(kind, share),
        deadline=None,
        database=None,  # no .hypothesis/ folder in the checkout
        print_blob=True,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# -- the file system, before and after --

Listing = dict[str, tuple[int, int]]  # path → (mtime_ns, size)

# Names the local target gives to what it writes; a new entry with one of them
# outside the data directory is a write that escaped.
TARGET_NAMES = re.compile(
    r"projects|zones|disks|instances|targets|.+-disk[0-9]+-[0-9a-f]{8}\.img|\..+\.[0-9a-f]{8}\.tmp"
)


def listing(root: Path, exclude: tuple[Path, ...] = ()) -> Listing:
    """Every path below `root` (itself included) with its mtime and size, not
    descending into `exclude` (which are listed as entries, without mtimes)."""
    found: Listing = {}
    skip = {str(p) for p in exclude}
    for top, dirs, files in os.walk(root):
        if top in skip:
            dirs[:] = []
            continue
        for name in (top, *(os.path.join(top, f) for f in files)):
            try:
                st_ = os.lstat(name)
            except FileNotFoundError:
                continue
            found[name] = (0, 0) if name in skip else (st_.st_mtime_ns, st_.st_size)
        for d in dirs:
            path = os.path.join(top, d)
            if path in skip:
                found[path] = (0, 0)
    return found


def entries(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


@dataclass
class FsSnapshot:
    """The data dir's surroundings: the session's tmp root in full, and the names
    in every ancestor above it (shared folders such as /tmp, where only entries
    named like the target's products are looked for)."""

    tree: Listing
    above: dict[Path, set[str]]

    @classmethod
    def take(cls, tmp_root: Path, exclude: tuple[Path, ...]) -> FsSnapshot:
        above = [*tmp_root.parents, Path(tempfile.gettempdir()), REPO]
        return cls(listing(tmp_root, exclude), {p: entries(p) for p in above})

    def assert_unchanged_since(self, before: FsSnapshot) -> None:
        changed = sorted(
            p
            for p in self.tree.keys() | before.tree.keys()
            if self.tree.get(p) != before.tree.get(p)
        )
        assert changed == [], f"written outside the data directory: {changed}"
        for folder, names in self.above.items():
            new = {n for n in names - before.above[folder] if TARGET_NAMES.fullmatch(n)}
            assert not new, f"new entries in {folder}: {sorted(new)}"


RFC1035_TEXT = r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?"
# A parent name's segment (server/domain/names.py): never '.', '..' or a slash.
SEGMENT_TEXT = r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"
UID = r"[0-9a-f]{8}"


def assert_target_layout(data_dir: Path, *, location: str = RFC1035_TEXT) -> int:
    """Every path below targets/ is `projects/{p}/zones/{z}/(disks|instances)/{file}`
    with the documented file names, and stays below targets/; the number of files.
    `p` and `z` match `location` (RFC 1035 labels unless a test says otherwise)."""
    name = RFC1035_TEXT
    file_pattern = re.compile(
        rf"projects/{location}/zones/{location}/"
        rf"(disks/{name}-disk[0-9]+-{UID}\.img"
        rf"|instances/({name}\.(json|xml)|\.{name}\.(json|xml)\.{UID}\.tmp))"
    )
    dir_pattern = re.compile(rf"projects(/{location}(/zones(/{location}(/(disks|instances))?)?)?)?")
    targets = data_dir / "targets"
    bad = []
    files = 0
    for path in sorted(targets.rglob("*")) if targets.exists() else ():
        relative = path.relative_to(targets).as_posix()
        if path.is_symlink():
            bad.append(f"symlink {relative}")
        elif path.is_dir():
            if not dir_pattern.fullmatch(relative):
                bad.append(f"dir {relative}")
        else:
            files += 1
            if not file_pattern.fullmatch(relative):
                bad.append(f"file {relative}")
        if not path.resolve().is_relative_to(targets.resolve()):
            bad.append(f"escapes {relative}")
    assert bad == [], f"unexpected paths below {targets}: {bad}"
    return files


# -- the server under fuzz --


def unary(channel: grpc.Channel, path: str, request: Any, response_type: Any) -> Any:
    """A call that must succeed (the fixture's setup, the serving checks)."""
    call = channel.unary_unary(
        path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return call(request, timeout=DEADLINE)


@dataclass
class Fuzzed:
    server: Server
    channel: grpc.Channel  # the fuzz's own, for raw calls
    data_dir: Path
    known: str  # a finished job
    held: str  # a job held in adapting_os for the whole module
    before: FsSnapshot
    tmp_root: Path
    exclude: tuple[Path, ...]
    idle: Server  # runs no job: the cancel operation of its one job stays open
    idle_channel: grpc.Channel
    pending: str  # that open operation (on `idle`)
    kept: tuple[str, ...]  # operations on `server` that no fuzz case deletes
    counts: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # status code names
    details: dict[str, str] = field(default_factory=dict)  # the first message of each
    page_tokens: list[str] = field(default_factory=list)  # ListCloneJobs'
    operations: list[str] = field(default_factory=list)  # on `server`: kept, then harvested
    operation_tokens: list[str] = field(default_factory=list)  # ListOperations'
    vm_tokens: list[str] = field(default_factory=list)  # ListMigratingVms'

    def assert_serving(self) -> None:
        for server in (self.server, self.idle):
            process = server.process
            assert process is not None and process.poll() is None, "a server process died"
        job = get(self.server.stub(), self.known)
        assert job.name == self.known
        held = get(self.server.stub(), self.held)
        assert held.name == self.held
        get_vm = GetMigratingVmRequest(name=VM1)
        vm = unary(
            self.channel, rpc(VMMIGRATION, "GetMigratingVm"), get_vm, google_type("MigratingVm")
        )
        assert vm.name == VM1
        for name in self.kept:
            request = operations_pb2.GetOperationRequest(name=name)
            assert unary(self.channel, rpc(OPERATIONS, "GetOperation"), request, Operation).done
        request = operations_pb2.GetOperationRequest(name=self.pending)
        pending = unary(self.idle_channel, rpc(OPERATIONS, "GetOperation"), request, Operation)
        assert not pending.done, pending


@pytest.fixture(scope="module")
def fuzzed(
    module_servers: ServerPool,
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[Fuzzed]:
    from conftest import write_sample_vm

    fuzz_root = tmp_path_factory.mktemp("fuzz")
    data_dir = fuzz_root / "data"
    data_dir.mkdir()

    def sample(vm: str) -> Path:
        return write_sample_vm(data_dir, vm, disks=1, disk_size="1MiB")

    with ThreadPoolExecutor(2) as writing:  # VM2 too, so that ListMigratingVms has pages
        list(writing.map(sample, [VM1, VM2]))
    idle_dir = fuzz_root / "idle"
    shutil.copytree(data_dir / "snapshots", idle_dir / "snapshots")
    tmp_root = tmp_path_factory.getbasetemp()
    exclude = (data_dir, idle_dir, module_servers.run_dir)
    before = FsSnapshot.take(tmp_root, exclude)
    # The idle server runs no job, so the cancel of its one job stays open; it
    # starts while the fuzzed server starts and runs its first jobs.
    idle = module_servers.add(idle_dir, max_concurrent_jobs=0)
    with ThreadPoolExecutor(1) as starting:
        idle_started = starting.submit(idle.start)
        server = module_servers.start(
            data_dir,
            heartbeat_interval=0.2,  # a waiting watch answers within 0.2 s
            fault_plan=[{"match": f"cloneJobs/{HELD_ID}", "step": ADAPTING, "action": "hold"}],
        )
        stub = server.stub()
        known = create(stub, KNOWN_ID, vm_body("known-vm")).name
        held = create(stub, HELD_ID, vm_body("held-vm")).name
        # Operations on the fuzzed server: a create's and a cancel's, kept for the
        # whole module, and another create's, which may be deleted. The cancelled
        # job is held too (the fault plan matches it), so that it ends CANCELLED.
        channel = server.channel()
        operations = []
        cancelled = f"{HELD_ID}-google"
        for job_id in ("google-created", cancelled):
            request = spb.CreateCloneJobRequest(
                parent=VM1, clone_job_id=job_id, clone_job=vm_body(f"{job_id}-vm")
            )
            created = unary(channel, rpc(VMMIGRATION, "CreateCloneJob"), request, Operation)
            operations.append(created)
        cancel = spb.CancelCloneJobRequest(name=job_name(cancelled))
        operations.append(unary(channel, rpc(VMMIGRATION, "CancelCloneJob"), cancel, Operation))
        kept = (operations[0].name, operations[2].name)
        read_until(watch(stub, held), step_running(ADAPTING))
        final = read_until(watch(stub, known), terminal)[-1].clone_job
        assert final.state == State.SUCCEEDED, final
        final = read_until(watch(stub, job_name(cancelled)), terminal)[-1].clone_job
        assert final.state == State.CANCELLED, final
        idle_started.result()
    token = spb.ListCloneJobsRequest(parent=VM1, page_size=1)
    page_token = stub.ListCloneJobs(token, timeout=DEADLINE).next_page_token

    idle_channel = idle.channel()
    stays = create(idle.stub(), "stays", vm_body("stays-vm")).name
    cancel = spb.CancelCloneJobRequest(name=stays)
    pending = unary(idle_channel, rpc(VMMIGRATION, "CancelCloneJob"), cancel, Operation)
    assert not pending.done, pending

    fuzz = Fuzzed(
        server,
        channel,
        data_dir,
        known,
        held,
        before,
        tmp_root,
        exclude,
        idle=idle,
        idle_channel=idle_channel,
        pending=pending.name,
        kept=kept,
        operations=[*kept, operations[1].name],
    )
    fuzz.page_tokens.append(page_token)
    list_operations = operations_pb2.ListOperationsRequest(name=LOCATION, page_size=1)
    listed = unary(
        channel,
        rpc(OPERATIONS, "ListOperations"),
        list_operations,
        operations_pb2.ListOperationsResponse,
    )
    assert listed.next_page_token, listed
    fuzz.operation_tokens.append(listed.next_page_token)
    list_vms = ListMigratingVmsRequest(parent=SOURCE, page_size=1)
    vms = unary(
        channel,
        rpc(VMMIGRATION, "ListMigratingVms"),
        list_vms,
        google_type("ListMigratingVmsResponse"),
    )
    assert vms.next_page_token, vms
    fuzz.vm_tokens.append(vms.next_page_token)
    fuzz.assert_serving()
    yield fuzz
    fuzz.channel.close()
    fuzz.idle_channel.close()
    total = sum(fuzz.counts.values())
    parts = ", ".join(f"{k} {v}" for k, v in sorted(fuzz.counts.items()))
    show(pytestconfig, f"fuzz cases run: {total} ({parts})")
    codes = ", ".join(f"{k} {v}" for k, v in fuzz.outcomes.most_common())
    show(pytestconfig, f"fuzz outcomes: {codes}")
    if os.environ.get("CLONEJOB_FUZZ_VERBOSE"):
        for key, text in sorted(fuzz.details.items()):
            show(pytestconfig, f"  {key}: {text}")


def show(config: pytest.Config, line: str) -> None:
    """Print past pytest's output capture, so that the count shows in every run."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    report = config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or report is None:  # pragma: no cover
        print(line)
        return
    with capture.global_and_fixture_disabled():
        report.ensure_newline()
        report.write_line(line)


# -- strategies --

NASTY = [
    "",
    ".",
    "..",
    "...",
    "/",
    "//",
    "../",
    "../..",
    "../../../../tmp/escaped",
    "a/../b",
    "a/b",
    "/etc/passwd",
    "/tmp",
    "%2e%2e",
    "%2e%2e%2f",
    "%2F",
    "..%2f..",
    "\0",
    "a\0b",
    "..\0",
    "\\",
    "..\\..",
    "a\\b",
    "a..b",
    "a.b",
    "-a",
    "a-",
    "A",
    "ünïcödé",
    "\u202eabc",
    "\u200fabc\u200e",
    "İ",
    "ａｂｃ",  # noqa: RUF001
    "\ufeffabc",
    "\U0001f600",
    "a" * 63,
    "a" * 64,
    "a" * 300,
    " ",
    "\t",
    "\n",
    "a b",
    "*",
    "?",
    "~",
    "$HOME",
    "'",
    '"',
    "<x/>",
    "&amp;",
    "CON",
    "nul",
    "projects",
    "cloneJobs",
    "ephemeral",
    "10.0.0.1",
    "::1",
    "0" * 40,
]
COLLECTIONS = ["projects", "locations", "sources", "migratingVms", "cloneJobs"]


def weighted(draw: st.DrawFn, choices: dict[str, int]) -> str:
    """One of the keys, with the given weights (shrinks towards the first)."""
    r = draw(st.integers(0, sum(choices.values()) - 1))
    for key, weight in choices.items():
        if r < weight:
            return key
        r -= weight
    raise AssertionError("unreachable")


valid_id = st.from_regex(r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
unique_id = st.uuids().map(lambda u: f"u{u.hex[:20]}")  # a new job that will run
# Only characters UTF-8 can encode: a lone surrogate fails in the client's own
# serializer (UnicodeEncodeError) before anything is sent.
utf8_characters = st.characters(codec="utf-8")
long_text = st.builds(lambda c, n: c * n, utf8_characters, st.integers(1, 10_000))
text_any = st.one_of(
    st.sampled_from(NASTY),
    st.text(alphabet=utf8_characters, max_size=40),
    st.text(alphabet=string.printable, max_size=80),
    valid_id,
    long_text,
)
segment = st.one_of(
    valid_id, st.sampled_from(["p1", "us-central1", "s1", "vm1", "a..b", "A_b.C"]), text_any
)
canonical_parent = st.builds(
    lambda p, l_, s, m: f"projects/{p}/locations/{l_}/sources/{s}/migratingVms/{m}",
    segment,
    segment,
    segment,
    segment,
)
mixed_path = st.lists(st.one_of(st.sampled_from(COLLECTIONS), segment), max_size=12).map("/".join)
parents = st.one_of(st.just(VM1), canonical_parent, mixed_path, text_any)
job_ids = st.one_of(st.sampled_from([*POOL_IDS, KNOWN_ID, HELD_ID]), valid_id, text_any)
pool_names = st.sampled_from([job_name(i) for i in [*POOL_IDS, KNOWN_ID, HELD_ID]])


@st.composite
def job_names(draw: st.DrawFn) -> str:
    kind = weighted(draw, {"pool": 45, "built": 25, "suffixed": 5, "mixed": 10, "text": 15})
    if kind == "pool":
        return draw(pool_names)
    if kind == "built":
        return f"{draw(parents)}/cloneJobs/{draw(job_ids)}"
    if kind == "suffixed":
        return draw(pool_names) + draw(st.sampled_from(["/", "/..", "\0", "x", "-", " "]))
    return draw(mixed_path if kind == "mixed" else text_any)


int32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([-(2**31), -1, 0, 2**31 - 1]))
int64 = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.sampled_from([-(2**63), -1, 0, 1, 2**63 - 1])
)
enum_any = st.one_of(st.integers(0, 8), int32)


def copies(item: Any, n: int) -> list[Any]:
    """`n` copies of `item`, fewer when that would pass 256 KiB (4 MiB is the limit)."""
    size = item.ByteSize() if hasattr(item, "ByteSize") else len(str(item).encode())
    return [item] * min(n, 256 * 1024 // (size + 1) + 1)


def big_list(item: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """A short list of drawn items, or up to a few thousand copies of one (cheap to draw)."""
    return st.one_of(
        st.lists(item, max_size=5),
        st.builds(copies, item, st.integers(0, 3000)),
    )


def big_map(key: st.SearchStrategy[str], value: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.dictionaries(key, value, max_size=6),
        st.builds(
            lambda k, v, n: {f"{k}{i}": v for i in range(n)},
            st.sampled_from(["k", "key-", "K", "ü", ""]),
            st.sampled_from(["", "v", "x" * 100]),
            st.integers(0, 3000),
        ),
        st.builds(lambda v: {"big": v}, st.sampled_from(["x" * 600_000, "y" * 524_285])),
    )


uuid_text = st.one_of(
    st.just(""),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.sampled_from([str(uuid.UUID(int=0)), "{" + str(uuid.uuid4()) + "}", "urn:uuid:x"]),
    text_any,
)


def nic(valid: bool) -> st.SearchStrategy[pb.NetworkInterface]:
    if valid:
        return st.builds(
            pb.NetworkInterface,
            network=st.sampled_from(["", "default", "projects/p1/global/networks/n1"]),
            internal_ip=st.sampled_from(["", "10.0.0.2", "ephemeral", "fd00::1"]),
            network_tier=st.integers(0, 2),
        )
    return st.builds(
        lambda n, s, i, e, t: pb.NetworkInterface(
            network=n, subnetwork=s, internal_ip=i, external_ip=e, network_tier=t
        ),
        text_any,
        text_any,
        text_any,
        text_any,
        enum_any,
    )


def scheduling(valid: bool) -> st.SearchStrategy[pb.ComputeScheduling]:
    enum = st.integers(0, 2) if valid else enum_any
    affinity = st.builds(
        lambda k, o, v: pb.SchedulingNodeAffinity(key=k, operator=o, values=v),
        valid_id if valid else text_any,
        enum,
        st.lists(valid_id if valid else text_any, max_size=3),
    )
    return st.builds(
        lambda h, r, a, c: pb.ComputeScheduling(
            on_host_maintenance=h, restart_type=r, node_affinities=a, min_node_cpus=c
        ),
        enum,
        enum,
        big_list(affinity) if not valid else st.lists(affinity, max_size=2),
        int32,
    )


# field → (a valid value, any value); required fields first
VM_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "vm_name": (valid_id, text_any),
    "zone": (st.one_of(st.just(ZONE), valid_id), text_any),
    "machine_type": (st.sampled_from(["n2-standard-2", "e2-micro"]), text_any),
    "project": (st.one_of(st.just(""), st.just("p1"), valid_id), text_any),
    "machine_type_series": (st.sampled_from(["", "n2"]), text_any),
    "hostname": (st.sampled_from(["", "h", "a.example.com"]), text_any),
    "service_account": (st.sampled_from(["", "sa@p1.iam.gserviceaccount.com"]), text_any),
    "network_tags": (st.lists(valid_id, max_size=3), big_list(text_any)),
    "network_interfaces": (st.lists(nic(True), max_size=2), big_list(nic(False))),
    "disk_type": (st.integers(0, 4), enum_any),
    "labels": (
        st.dictionaries(valid_id, st.from_regex(r"[a-z0-9_-]{0,10}", fullmatch=True), max_size=4),
        big_map(text_any, text_any),
    ),
    "license_type": (st.integers(0, 2), enum_any),
    "compute_scheduling": (scheduling(True), scheduling(False)),
    "secure_boot": (st.booleans(), st.booleans()),
    "enable_vtpm": (st.booleans(), st.booleans()),
    "enable_integrity_monitoring": (st.booleans(), st.booleans()),
    "metadata": (
        st.dictionaries(
            st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True), text_any, max_size=4
        ),
        big_map(text_any, text_any),
    ),
    "additional_licenses": (
        st.lists(st.just("projects/p/global/licenses/l"), max_size=2),
        big_list(text_any),
    ),
    "encryption": (
        st.builds(pb.Encryption, kms_key=text_any),
        st.builds(pb.Encryption, kms_key=text_any),
    ),
    "boot_conversion": (st.integers(0, 2), enum_any),
    "adaptation_modifiers": (
        st.lists(st.builds(pb.AdaptationModifier, modifier=text_any, value=text_any), max_size=2),
        big_list(st.builds(pb.AdaptationModifier, modifier=text_any, value=text_any)),
    ),
    "disk_replica_zones": (st.lists(valid_id, max_size=2), big_list(text_any)),
    "storage_pool": (text_any, text_any),
    # Output only: the server must ignore whatever arrives here.
    "applied_license": (
        st.builds(pb.AppliedLicense, type=enum_any, os_license=text_any),
        st.builds(pb.AppliedLicense, type=enum_any, os_license=text_any),
    ),
    "boot_option": (enum_any, enum_any),
}
REQUIRED = ("vm_name", "zone", "machine_type")


def set_field(message: Any, name: str, value: Any) -> None:
    if isinstance(value, list):
        getattr(message, name).extend(value)
    elif isinstance(value, dict):
        getattr(message, name).update(value)
    elif hasattr(value, "DESCRIPTOR"):
        getattr(message, name).CopyFrom(value)
    else:
        setattr(message, name, value)  # raw ints too: enums are open in proto3


@st.composite
def vm_details(draw: st.DrawFn, mode: str) -> pb.ComputeEngineTargetDetails:
    details = pb.ComputeEngineTargetDetails()
    bad = draw(st.sampled_from(sorted(VM_FIELDS))) if mode == "one_bad" else None
    for name, (valid, wild) in VM_FIELDS.items():
        if name == bad or mode == "wild":
            if draw(st.booleans()):
                set_field(details, name, draw(wild))
        elif name in REQUIRED or draw(st.booleans()):
            set_field(details, name, draw(valid))
    return details


@st.composite
def disks_details(draw: st.DrawFn) -> pb.ComputeEngineDisksTargetDetails:
    details = pb.ComputeEngineDisksTargetDetails()
    kind = draw(st.sampled_from(["none", "disks", "vm"]))
    if kind == "disks":
        details.disks_target_details.SetInParent()
    elif kind == "vm":
        details.vm_target_details.vm_uri = draw(text_any)
    for number, uri in draw(st.lists(st.tuples(int32, text_any), max_size=3)):
        details.disks.add(source_disk_number=number, disk_uri=uri)
    return details


@st.composite
def output_only(draw: st.DrawFn, job: pb.CloneJob) -> None:
    """Fill some output-only fields of a CloneJob body, which the server must ignore."""
    if draw(st.booleans()):
        job.name = draw(text_any)
    if draw(st.booleans()):
        job.state = draw(enum_any)  # type: ignore[assignment]
    if draw(st.booleans()):
        job.create_time.seconds = draw(st.integers(-(2**40), 2**40))
        job.end_time.nanos = draw(int32)
    if draw(st.booleans()):
        job.error.code = draw(int32)
        job.error.message = draw(text_any)
    if draw(st.booleans()):
        for _ in range(draw(st.integers(0, 3))):
            job.steps.add().adapting_os.SetInParent()
    if draw(st.booleans()):
        job.compute_engine_vm_details.vm_name = draw(text_any)
        job.target_details.disk_type = draw(enum_any)  # type: ignore[assignment]


@st.composite
def create_requests(draw: st.DrawFn) -> spb.CreateCloneJobRequest:
    # Most requests are valid or nearly so, to reach deep validation and the engine.
    mode = weighted(draw, {"valid": 55, "one_bad": 30, "wild": 15})
    request = spb.CreateCloneJobRequest()
    if mode == "wild":
        request.parent = draw(parents)
        request.clone_job_id = draw(job_ids)
        request.request_id = draw(uuid_text)
    else:
        request.parent = VM1 if weighted(draw, {"vm1": 9, "other": 1}) == "vm1" else draw(parents)
        request.clone_job_id = draw(st.one_of(st.sampled_from(POOL_IDS), valid_id, unique_id))
        request.request_id = (
            draw(st.one_of(st.just(""), st.uuids().map(str)))
            if weighted(draw, {"valid": 9, "other": 1}) == "valid"
            else draw(uuid_text)
        )
    target = weighted(draw, {"vm": 70, "disks": 18, "both": 4, "none": 4, "absent": 4})
    if target in ("vm", "both"):
        request.clone_job.compute_engine_target_details.CopyFrom(draw(vm_details(mode)))
    if target in ("disks", "both"):
        request.clone_job.compute_engine_disks_target_details.CopyFrom(draw(disks_details()))
    if target == "none":
        request.clone_job.SetInParent()
    if mode != "valid" or draw(st.booleans()):
        draw(output_only(request.clone_job))
    return request


get_requests = st.builds(spb.GetCloneJobRequest, name=job_names())
cancel_requests = st.builds(spb.CancelCloneJobRequest, name=job_names())
watch_requests = st.builds(
    spb.WatchCloneJobRequest,
    name=job_names(),
    after_revision=st.one_of(st.integers(-1, 12), st.integers(-3, 40), int64),
)

filter_values = st.one_of(
    st.sampled_from(
        ["ACTIVE", "SUCCEEDED", "PENDING", "bogus", '"2026-01-01T00:00:00Z"', '"x"', '"\\"']
    ),
    st.sampled_from(
        [
            '"0001-01-01T00:00:00+23:59"',
            '"9999-12-31T23:59:59-23:59"',
            '"2026-02-30T00:00:00Z"',
            '"2026-01-01T00:00:00.1234567891Z"',
            '"2026-01-01T00:00:00"',
            '"2026-01-01T25:61:61Z"',
        ]
    ),
    text_any.map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    text_any,
)
comparison = st.builds(
    lambda f, o, v: f"{f} {o} {v}",
    st.sampled_from(["state", "create_time", "name", "bogus", "", "State"]),
    st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "==", ":", ""]),
    filter_values,
)
good_comparison = st.one_of(
    st.builds(
        lambda o, v: f"state {o} {v}",
        st.sampled_from(["=", "!="]),
        st.sampled_from(["ACTIVE", "SUCCEEDED", "PENDING", "FAILED", "CANCELLED"]),
    ),
    st.builds(
        lambda o, v: f'create_time {o} "{v}"',
        st.sampled_from(["=", "!=", "<", "<=", ">", ">="]),
        st.sampled_from(
            [
                "2026-01-01T00:00:00Z",
                "1970-01-01T00:00:00.5+01:00",
                "0001-01-01T00:00:00+23:59",
                "9999-12-31T23:59:59-23:59",
                "2026-01-01T00:00:00.123456789Z",
            ]
        ),
    ),
    st.builds(
        lambda o, v: f'name {o} "{v}"',
        st.sampled_from(["=", "!="]),
        st.one_of(pool_names, text_any).map(lambda t: t.replace("\\", "\\\\").replace('"', '\\"')),
    ),
)
good_filter = st.lists(good_comparison, min_size=1, max_size=4).flatmap(
    lambda parts: st.lists(
        st.sampled_from([" AND ", " OR "]), min_size=len(parts) - 1, max_size=len(parts) - 1
    ).map(lambda joins: "".join(p + j for p, j in zip(parts, [*joins, ""], strict=True)))
)
filters = st.one_of(
    st.just(""),
    good_filter,
    good_filter,
    st.lists(comparison, min_size=1, max_size=6).flatmap(
        lambda parts: st.lists(
            st.sampled_from([" AND ", " OR ", " and ", " ", " AND OR "]),
            min_size=len(parts) - 1,
            max_size=len(parts) - 1,
        ).map(lambda joins: "".join(p + j for p, j in zip(parts, [*joins, ""], strict=True)))
    ),
    st.builds(lambda n: "state = ACTIVE OR " * n + "state = FAILED", st.integers(0, 500)),
    st.builds(lambda n: "(" * n, st.integers(0, 3000)),
    text_any,
)
orders = st.one_of(
    st.sampled_from(["", "create_time", "name desc", "name asc", "state", "name,create_time"]),
    text_any,
)


@st.composite
def list_requests(draw: st.DrawFn, issued: list[str]) -> spb.ListCloneJobsRequest:
    usual = weighted(draw, {"usual": 7, "any": 3}) == "usual"
    request = spb.ListCloneJobsRequest(
        parent=VM1 if usual else draw(parents),
        page_size=draw(st.integers(-1, 1002) if usual else int32),
        filter=draw(st.one_of(st.just(""), good_filter) if usual else filters),
        order_by=draw(st.sampled_from(["", "create_time", "name desc"]) if usual else orders),
    )
    request.page_token = draw_page_token(draw, issued)
    return request


def draw_page_token(draw: st.DrawFn, issued: Sequence[str]) -> str:
    """None ("") mostly, else an issued token as it is or tampered with, or random text."""
    kind = weighted(draw, {"none": 50, "issued": 20, "tampered": 20, "random": 10})
    if kind == "issued" or kind == "tampered":
        token = draw(st.sampled_from(issued))
        if kind == "tampered" and token:
            i = draw(st.integers(0, len(token) - 1))
            token = (
                token[:i] + draw(st.sampled_from(["A", "_", "-", "=", "é", ""])) + token[i + 1 :]
            )
        return token
    if kind == "random":
        random: str = draw(st.one_of(text_any, st.binary(max_size=200).map(lambda b: b.hex())))
        return random
    return ""


# -- the Google surface's requests --

GOOGLE_COLLECTIONS = [*COLLECTIONS, "operations"]
google_path = st.lists(st.one_of(st.sampled_from(GOOGLE_COLLECTIONS), segment), max_size=12).map(
    "/".join
)
SUFFIXES = ["/", "/..", "/.", "\0", "x", "-", " ", "/operations", "/migratingVms"]
# Names far past any limit (4 MiB is the message limit).
huge_text = st.sampled_from(
    [
        "a" * 1_000_000,
        "/".join(["projects", "p1"] * 100_000),
        "\0" * 500_000,
        "ü" * 300_000,
        f"{LOCATION}/operations/" + "o" * 1_000_000,
        f"{SOURCE}/migratingVms/" + "../" * 300_000,
    ]
)


def google_name(built: st.SearchStrategy[str], known: Sequence[str]) -> st.SearchStrategy[str]:
    """A name: a known one as it is or suffixed, one built from hostile segments, a
    path of mixed collections and segments, any text, or a huge one."""
    return st.one_of(
        st.sampled_from(known),
        st.sampled_from(known),
        built,
        built,
        st.builds(lambda n, s: n + s, st.sampled_from(known), st.sampled_from(SUFFIXES)),
        google_path,
        text_any,
        huge_text,
    )


location_names = google_name(
    st.builds(lambda p, l_: f"projects/{p}/locations/{l_}", segment, segment), [LOCATION]
)
source_names = google_name(
    st.builds(
        lambda p, l_, s: f"projects/{p}/locations/{l_}/sources/{s}", segment, segment, segment
    ),
    [SOURCE],
)
migrating_vm_names = google_name(
    st.one_of(st.builds(lambda m: f"{SOURCE}/migratingVms/{m}", segment), canonical_parent),
    [VM1, VM2],
)
operation_ids = st.one_of(
    st.builds(
        lambda ms, h: f"operation-{ms}-{h}",
        st.integers(0, 2**64),
        st.binary(max_size=12).map(bytes.hex),
    ),
    valid_id,
    text_any,
)


def operation_names(known: Sequence[str]) -> st.SearchStrategy[str]:
    ids = st.one_of(st.sampled_from([n.rsplit("/", 1)[-1] for n in known]), operation_ids)
    built = st.builds(lambda loc, i: f"{loc}/operations/{i}", location_names, ids)
    return google_name(built, known)


# Page sizes of every kind, with valid requests too: a page or two of the few
# items listed, around the default and the limit, negative, and int32 at either end.
google_page_sizes = st.one_of(
    st.integers(-3, 4),
    st.integers(-3, 4),
    st.sampled_from([-(2**31), 0, 499, 500, 501, 999, 1000, 1001, 2**31 - 1]),
    int32,
)
views = st.one_of(st.integers(0, 2), enum_any)  # MigratingVmView: UNSPECIFIED, BASIC, FULL


@st.composite
def list_vms_requests(draw: st.DrawFn, issued: Sequence[str]) -> Any:
    usual = weighted(draw, {"usual": 7, "any": 3}) == "usual"
    request = ListMigratingVmsRequest(
        parent=SOURCE if usual else draw(source_names),
        page_size=draw(google_page_sizes),
        filter="" if usual else draw(filters),
        order_by=draw(st.sampled_from(["", "name"]) if usual else orders),
        view=draw(views),
    )
    request.page_token = draw_page_token(draw, issued)
    return request


@st.composite
def list_operations_requests(
    draw: st.DrawFn, issued: Sequence[str]
) -> operations_pb2.ListOperationsRequest:
    usual = weighted(draw, {"usual": 7, "any": 3}) == "usual"
    request = operations_pb2.ListOperationsRequest(
        name=LOCATION if usual else draw(location_names),
        page_size=draw(google_page_sizes),
        filter="" if usual else draw(filters),
        return_partial_success=draw(st.booleans()),
    )
    request.page_token = draw_page_token(draw, issued)
    return request


def duration(seconds: int, nanos: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


MAX_DURATION_SECONDS = 315_576_000_000  # what google.protobuf.Duration allows
durations = st.one_of(
    st.builds(duration, st.integers(0, 1), st.integers(0, 999_999_999)),  # a second or two
    st.builds(duration, int64, int32),
    st.builds(duration, st.integers(-(2**63), 0), st.integers(-999_999_999, 0)),
    st.sampled_from(
        [
            (2**63 - 1, 999_999_999),
            (2**63 - 1, 2**31 - 1),
            (-(2**63), -(2**31)),
            (MAX_DURATION_SECONDS, 0),
            (MAX_DURATION_SECONDS + 1, 0),
            (-MAX_DURATION_SECONDS - 1, 0),
            (10**12, 0),
            (0, 0),
            (0, 1),
            (0, -1),
            (-1, 0),
            (1, -1),
            (-1, 1),
            (0, 10**9),
            (0, 2**31 - 1),
            (600, 0),
            (601, 0),
        ]
    ).map(lambda sn: duration(*sn)),
)


@st.composite
def wait_requests(
    draw: st.DrawFn, known: Sequence[str], pending: str
) -> operations_pb2.WaitOperationRequest:
    request = operations_pb2.WaitOperationRequest()
    if weighted(draw, {"known": 97, "pending": 3}) == "pending":
        request.name = pending
    else:
        request.name = draw(operation_names(known))
    if weighted(draw, {"timeout": 85, "none": 15}) == "timeout":
        request.timeout.CopyFrom(draw(durations))
    return request


def not_held(fuzz: Fuzzed) -> st.SearchStrategy[spb.CancelCloneJobRequest]:
    """Cancel requests that spare the held job (it stays held for the other tests)."""

    def spare(request: spb.CancelCloneJobRequest) -> spb.CancelCloneJobRequest:
        if request.name == fuzz.held:
            request.name += "x"
        return request

    return cancel_requests.map(spare)


def google_requests(fuzz: Fuzzed, path: str) -> st.SearchStrategy[Any]:
    """The requests fuzzed on a method of the Google surface: clonejob.v1's for the
    clone-job methods (wire-compatible with Google's), Google's own for the others.
    Made when its test starts, from the operations and tokens known by then."""
    known = list(fuzz.operations)
    issued = [*fuzz.vm_tokens, *fuzz.operation_tokens, *fuzz.page_tokens]
    method = path.rsplit("/", 1)[-1]
    if method == "CreateCloneJob":
        return create_requests()
    if method == "GetCloneJob":
        return get_requests
    if method == "ListCloneJobs":
        return list_requests(fuzz.page_tokens)
    if method == "CancelCloneJob":
        return not_held(fuzz)
    if method == "GetMigratingVm":
        return st.builds(GetMigratingVmRequest, name=migrating_vm_names, view=views)
    if method == "ListMigratingVms":
        return list_vms_requests(issued)
    if method == "ListOperations":
        return list_operations_requests(issued)
    if method == "WaitOperation":
        return wait_requests(known, fuzz.pending)
    if method == "DeleteOperation":  # the kept operations stay
        deletable = [n for n in known if n not in fuzz.kept]
        return st.builds(operations_pb2.DeleteOperationRequest, name=operation_names(deletable))
    request_type = getattr(operations_pb2, f"{method}Request")  # Get and Cancel
    return st.builds(request_type, name=operation_names(known))


# -- raw bytes --

METHODS = {
    "CreateCloneJob": create_requests(),
    "GetCloneJob": get_requests,
    "ListCloneJobs": list_requests([""]),
    "CancelCloneJob": cancel_requests,
    "WatchCloneJob": watch_requests,
}


@st.composite
def mutated(draw: st.DrawFn, requests: st.SearchStrategy[Any]) -> bytes:
    data = bytearray(draw(requests).SerializeToString())
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "merge"]))
        i = draw(st.integers(0, len(data)))
        if action == "truncate":
            del data[i:]
        elif action == "flip" and i < len(data):
            data[i] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif action == "merge":  # concatenated messages merge: a valid request
            data += draw(requests).SerializeToString()
    return bytes(data)


def raw_bytes(requests: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=4096),
        mutated(requests),
        mutated(requests),
        # field 1 (a string in every request) holding invalid UTF-8
        st.binary(min_size=1, max_size=20).map(
            lambda b: b"\x0a" + bytes([len(b) + 1]) + b"\xff" + b
        ),
        # a length prefix far larger than the message
        st.sampled_from(
            [b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"]
        ),
        # unknown field 15 as groups nested past protobuf's recursion limit
        st.integers(1, 300).map(lambda n: b"\x7b" * n + b"\x7c" * n),
        # the same field many times over
        st.integers(1, 5000).map(lambda n: b"\x0a\x01a" * n),
    )


# -- checks --


def check_error(fuzz: Fuzzed, error: grpc.RpcError, what: str, request: Any) -> str:
    """Check an RPC's error status; its code's name."""
    code = error.code()
    shown = repr(request)[:2000]
    details = error.details()
    assert code not in FORBIDDEN, f"{what} ended with {code}: {details}\n{shown}"
    if code in SERVICE_CODES:
        info = error_info(error)
        assert info.domain == "clonejob.v1", info
    fuzz.details.setdefault(f"{what} {code.name}", str(details)[:200])
    return str(code.name)


def call_unary(
    fuzz: Fuzzed,
    path: str,
    request: Any,
    *,
    raw: bool = False,
    channel: grpc.Channel | None = None,
    deadline: float = DEADLINE,
    note: str = "",
) -> bytes | None:
    """Call the method at `path` (`/package.Service/Method`) on the fuzzed server
    (or on `channel`); the serialized response, None for an error."""
    what = label(path) + (" raw" if raw else "") + note
    fuzz.counts[what] += 1
    call = (channel or fuzz.channel).unary_unary(
        path,
        request_serializer=None if raw else type(request).SerializeToString,
        response_deserializer=None,
    )
    started = time.monotonic()
    outcome = "OK"
    response = None
    try:
        response = call(request, timeout=deadline)
    except grpc.RpcError as error:
        outcome = check_error(fuzz, error, what, request)
    took = time.monotonic() - started
    assert took < deadline, f"{what} took {took:.3f} s, past its {deadline} s deadline"
    fuzz.outcomes[f"{what} {outcome}"] += 1
    return response


def call_watch(fuzz: Fuzzed, request: Any, reads: int, *, raw: bool = False) -> None:
    """Open a watch, read at most `reads` messages, then cancel it."""
    what = "WatchCloneJob" + (" raw" if raw else "")
    fuzz.counts[what] += 1
    call: Any = fuzz.channel.unary_stream(
        "/clonejob.v1.CloneJobService/WatchCloneJob",
        request_serializer=None if raw else spb.WatchCloneJobRequest.SerializeToString,
        response_deserializer=None,
    )(request, timeout=DEADLINE)
    started = time.monotonic()
    outcome = f"read {reads}"
    try:
        for _ in range(reads):
            next(call)
    except StopIteration:
        assert call.code() == grpc.StatusCode.OK
        outcome = "OK"
    except grpc.RpcError as error:
        outcome = check_error(fuzz, error, what, request)
    finally:
        call.cancel()
    assert time.monotonic() - started < DEADLINE
    fuzz.outcomes[f"{what} {outcome}"] += 1


# -- the fuzz tests --


def test_fuzz_create(fuzzed: Fuzzed) -> None:
    @fuzz_settings("create")
    @given(request=create_requests())
    def run(request: spb.CreateCloneJobRequest) -> None:
        call_unary(fuzzed, rpc(CLONEJOB, "CreateCloneJob"), request)

    run()
    fuzzed.assert_serving()


def test_fuzz_get(fuzzed: Fuzzed) -> None:
    @fuzz_settings("get")
    @given(request=get_requests)
    def run(request: spb.GetCloneJobRequest) -> None:
        call_unary(fuzzed, rpc(CLONEJOB, "GetCloneJob"), request)

    run()
    fuzzed.assert_serving()


def test_fuzz_list(fuzzed: Fuzzed) -> None:
    stub = fuzzed.server.stub()
    for order in ("", "name desc"):
        response = stub.ListCloneJobs(
            spb.ListCloneJobsRequest(parent=VM1, page_size=1, order_by=order), timeout=DEADLINE
        )
        fuzzed.page_tokens.append(response.next_page_token)

    @fuzz_settings("list")
    @given(request=list_requests(fuzzed.page_tokens))
    def run(request: spb.ListCloneJobsRequest) -> None:
        call_unary(fuzzed, rpc(CLONEJOB, "ListCloneJobs"), request)

    run()
    fuzzed.assert_serving()


def test_fuzz_cancel(fuzzed: Fuzzed) -> None:
    @fuzz_settings("cancel")
    @given(request=cancel_requests)
    def run(request: spb.CancelCloneJobRequest) -> None:
        if request.name == fuzzed.held:
            request.name += "x"  # the held job stays held for the other tests
        call_unary(fuzzed, rpc(CLONEJOB, "CancelCloneJob"), request)

    run()
    fuzzed.assert_serving()


def test_fuzz_watch(fuzzed: Fuzzed) -> None:
    @fuzz_settings("watch")
    @given(request=watch_requests, reads=st.sampled_from([1, 2, 1, 0]))
    def run(request: spb.WatchCloneJobRequest, reads: int) -> None:
        call_watch(fuzzed, request, reads)

    run()
    fuzzed.assert_serving()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fuzz_raw_bytes(fuzzed: Fuzzed, method: str) -> None:
    @fuzz_settings("raw", share=1 / len(METHODS))
    @given(data=raw_bytes(METHODS[method]), reads=st.sampled_from([1, 2, 0]))
    def run(data: bytes, reads: int) -> None:
        if method == "WatchCloneJob":
            call_watch(fuzzed, data, reads, raw=True)
        else:
            call_unary(fuzzed, rpc(CLONEJOB, method), data, raw=True)

    run()
    fuzzed.assert_serving()


def test_fuzz_covers_every_method_of_the_google_surface() -> None:
    from server.api import operations, vmmigration

    served = {rpc(VMMIGRATION, m) for m in vmmigration.REQUEST_TYPES}
    served |= {rpc(OPERATIONS, m) for m in operations.REQUEST_TYPES}
    assert set(GOOGLE_SHARES) == served
    assert abs(sum(GOOGLE_SHARES.values()) - 1) < 1e-9


def harvest(fuzz: Fuzzed, path: str, response: bytes | None) -> None:
    """Keep the operation a Create or Cancel returned, for the Operations fuzz."""
    if response is None or path.rsplit("/", 1)[-1] not in ("CreateCloneJob", "CancelCloneJob"):
        return
    operation = Operation.FromString(response)
    assert operation.name.startswith("projects/"), operation
    if path.endswith("/CreateCloneJob"):
        assert operation.done, operation  # a create's operation is done at once
    if operation.name not in fuzz.operations and len(fuzz.operations) < 100:
        fuzz.operations.append(operation.name)


# Always waited on the open operation, besides what Hypothesis draws: the
# timeouts whose wait only the deadline bounds (none at all, past any
# timedelta, past Duration's own range) and the least one.
OPEN_WAIT_TIMEOUTS = [
    None,
    duration(2**63 - 1, 999_999_999),
    duration(MAX_DURATION_SECONDS + 1, 0),
    duration(0, 1),
]


@pytest.mark.parametrize("path", list(GOOGLE_SHARES), ids=label)
def test_fuzz_google(fuzzed: Fuzzed, path: str) -> None:
    @fuzz_settings("google", share=GOOGLE_SHARES[path])
    @given(request=google_requests(fuzzed, path))
    def run(request: Any) -> None:
        if path == WAIT and request.name == fuzzed.pending:
            # The open operation: the wait ends with its timeout or just before
            # the (short) deadline, not done either way.
            response = call_unary(
                fuzzed,
                path,
                request,
                channel=fuzzed.idle_channel,
                deadline=PENDING_DEADLINE,
                note=" (open)",
            )
            if response is not None:
                operation = Operation.FromString(response)
                assert operation.name == fuzzed.pending and not operation.done, operation
            return
        harvest(fuzzed, path, call_unary(fuzzed, path, request))

    if path == WAIT:
        for timeout in OPEN_WAIT_TIMEOUTS:
            request = operations_pb2.WaitOperationRequest(name=fuzzed.pending, timeout=timeout)
            run = example(request=request)(run)
    run()
    fuzzed.assert_serving()


@pytest.mark.parametrize("path", list(GOOGLE_SHARES), ids=label)
def test_fuzz_google_raw_bytes(fuzzed: Fuzzed, path: str) -> None:
    @fuzz_settings("google_raw", share=1 / len(GOOGLE_SHARES))
    @given(data=raw_bytes(google_requests(fuzzed, path)))
    def run(data: bytes) -> None:
        call_unary(fuzzed, path, data, raw=True)

    run()
    fuzzed.assert_serving()


def test_fuzz_wrote_nothing_outside_the_data_dir(fuzzed: Fuzzed) -> None:
    """After the fuzz run: it comes right after the fuzz tests, before any other
    test of this module makes folders in the session's tmp root."""
    fuzzed.assert_serving()
    files = assert_target_layout(fuzzed.data_dir)
    assert files >= 2, "the known job's disk and instance files are missing"
    FsSnapshot.take(fuzzed.tmp_root, fuzzed.exclude).assert_unchanged_since(fuzzed.before)


# -- path safety --

TARGETED = [
    "..",
    ".",
    "../..",
    "../../../../tmp/escaped",
    "a/../b",
    "a/b",
    "/tmp/escaped",
    "%2e%2e",
    "%2e%2e%2fescaped",
    "..%2f..%2fescaped",
    "\0",
    "a\0b",
    "\\",
    "..\\..\\escaped",
    "a\\b",
    "a" * 300,
    "ünïcödé",
    "\u202eescaped",
    "a\u200fb",
    "a..b",
    "a.b",
    "A",
    "escaped-",
]


# Values of TARGETED that are valid parent segments: sample VMs exist under such
# parents, so a job would run if the server accepted them in a target path.
SEGMENT_VALUES = ("a..b", "A")
VM_PATH_FIELDS = ("vm_name", "zone", "project", "machine_type")


@dataclass
class Sandbox:
    server: Server
    data_dir: Path
    tmp_root: Path
    exclude: tuple[Path, ...]
    parents: list[str]


def hostile_parents() -> list[str]:
    out = []
    for value in SEGMENT_VALUES:
        out += [
            f"projects/{value}/locations/us-central1/sources/s1/migratingVms/vm1",
            f"projects/p1/locations/{value}/sources/s1/migratingVms/vm1",
            f"projects/p1/locations/us-central1/sources/s1/migratingVms/{value}",
        ]
    return out


@pytest.fixture
def sandbox(servers: ServerPool, tmp_path: Path) -> Sandbox:
    from conftest import write_sample_vm

    data_dir = tmp_path / "sandbox" / "data"
    data_dir.mkdir(parents=True)
    parents_ = [VM1, *hostile_parents()]
    for parent in parents_:
        write_sample_vm(data_dir, parent, disks=1, disk_size="1MiB")
    server = servers.start(data_dir)
    return Sandbox(server, data_dir, tmp_path.parent, (data_dir, servers.run_dir), parents_)


def try_create(stub: Any, job_id: str, body: pb.CloneJob, parent: str = VM1) -> Any:
    """The created job, or the RpcError."""
    try:
        return create(stub, job_id, body, parent=parent)
    except grpc.RpcError as error:
        return error


def test_path_safety_targeted_values(sandbox: Sandbox) -> None:
    """Hostile names in every field of a VM target that reaches a path, and in the
    parent, the clone job id and the disks; nothing lands outside the data dir."""
    stub = sandbox.server.stub()
    before = FsSnapshot.take(sandbox.tmp_root, sandbox.exclude)
    snapshots_before = listing(sandbox.data_dir / "snapshots")
    created: list[str] = []
    n = 0
    for value in TARGETED:
        for field_name in VM_PATH_FIELDS:
            n += 1
            fields: dict[str, Any] = {
                "vm_name": f"safe-{n}",
                "zone": ZONE,
                "machine_type": "e2-micro",
            }
            fields[field_name] = value
            body = pb.CloneJob(
                compute_engine_target_details=pb.ComputeEngineTargetDetails(**fields)
            )
            result = try_create(stub, f"t{n}", body)
            if isinstance(result, grpc.RpcError):
                assert result.code() == grpc.StatusCode.INVALID_ARGUMENT, (field_name, value)
                path = f"clone_job.compute_engine_target_details.{field_name}"
                assert path in bad_fields_of(result), (field_name, value)
            else:
                assert re.fullmatch(RFC1035_TEXT, value), (field_name, value)
                created.append(result.name)
        for parent in (
            f"projects/{value}/locations/us-central1/sources/s1/migratingVms/vm1",
            f"projects/p1/locations/{value}/sources/s1/migratingVms/vm1",
            f"projects/p1/locations/us-central1/sources/s1/migratingVms/{value}",
        ):
            n += 1
            for kind, body in (("vm", vm_body(f"safe-{n}")), ("disks", disks_body())):
                result = try_create(stub, f"t{n}-{kind}", body, parent=parent)
                if isinstance(result, grpc.RpcError):
                    assert result.code() in (
                        grpc.StatusCode.INVALID_ARGUMENT,
                        grpc.StatusCode.NOT_FOUND,
                    ), (parent, result)
                else:
                    assert parent in sandbox.parents, parent
                    created.append(result.name)
        n += 1
        result = try_create(stub, value, vm_body(f"safe-{n}"))
        assert isinstance(result, grpc.RpcError), value
        assert result.code() == grpc.StatusCode.INVALID_ARGUMENT, value

    assert len(created) >= 4  # the valid-looking values did reach the engine
    for name in created:
        wait_finished(stub, name)
    FsSnapshot.take(sandbox.tmp_root, sandbox.exclude).assert_unchanged_since(before)
    assert listing(sandbox.data_dir / "snapshots") == snapshots_before
    # Disks-only clones go below the parent's project and location, which are
    # safe segments (disks-only clones of other parents are refused: see below).
    assert_target_layout(sandbox.data_dir, location=SEGMENT_TEXT)


def test_path_safety_disks_only_target_from_non_rfc1035_parent(sandbox: Sandbox) -> None:
    stub = sandbox.server.stub()
    for i, parent in enumerate(sandbox.parents):
        result = try_create(stub, f"d{i}", disks_body(), parent=parent)
        if isinstance(result, grpc.RpcError):
            assert result.code() == grpc.StatusCode.INVALID_ARGUMENT, (parent, result)
        else:
            final = wait_finished(stub, result.name)
            for disk in final.compute_engine_disks_target_details.disks:
                assert re.fullmatch(
                    rf"projects/{RFC1035_TEXT}/zones/{RFC1035_TEXT}/disks/.+", disk.disk_uri
                ), disk.disk_uri
    assert_target_layout(sandbox.data_dir)


def bad_fields_of(error: grpc.RpcError) -> list[str]:
    from clonejob_rpc import bad_fields

    return bad_fields(error)


def wait_finished(stub: Any, name: str) -> pb.CloneJob:
    """The job in its terminal state (watched; the watch's own deadline bounds it)."""
    call = watch(stub, name)
    for message in call:
        if terminal(message):
            call.cancel()
            job: pb.CloneJob = message.clone_job
            return job
    raise AssertionError(f"the watch of {name} ended with {call.code()} before the end")
