"""Connecting to Ray, once for the whole project: `spamo tune` and `spamo evaluate` both call `connect`.

Two promises:

- **Local means local.** Without an address a private Ray instance is started (`ray.init(address="local")`), never
  the cluster that `RAY_ADDRESS` or the registration file of an earlier `ray start` (`/tmp/ray/ray_current_cluster`)
  points to: a stale registration would otherwise make the run hang on "Failed to connect to GCS" warnings. A small
  reaper process (`search/reaper.py`) ends the Ray processes this driver started if the driver is SIGKILLed
  (Ray's agents outlive a killed driver otherwise).
- **A bad address is one line within seconds.** Before `ray.init` (which retries for about 20 s), the address is
  checked with a plain socket (nothing listening) and one GCS request with this shell's token (a missing or wrong
  token), and the refusal names the likely cause.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

from spamo.errors import SpamoInputError

# Ray's experiment snapshot period (seconds) unless the user set TUNE_GLOBAL_CHECKPOINT_S.
SNAPSHOT_SECONDS = "2"
PROBE_TIMEOUT_S = 5.0
TOKEN_HELP = ("start the driver with the cluster's token: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=FILE "
              "(or RAY_AUTH_TOKEN, or the file ~/.ray/auth_token); see the README, 'Cluster runs'")
REAPER = Path(__file__).with_name("reaper.py")
_REAPER_PIPES: list[int] = []  # write ends of the reapers' stdin pipes (closed by `disconnect`)


def connect(address: str | None, log=print, num_cpus: int | None = None) -> bool:
    """Start a private local Ray (address None) or join the cluster at `address` (auto, HOST:PORT, ray://HOST:PORT).

    Returns True when this call initialised Ray (the caller shuts it down), False when Ray was already running.
    """
    import ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_SECONDS)
    # Ray Tune's CSV and TensorBoard loggers write every report of every trial from the driver and nothing here reads
    # them; search.tuning passes the JSON logger (result.json) itself
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():
        return False
    if address is None:
        os.environ.pop("RAY_ADDRESS", None)  # nor may Ray Tune or a child process find a cluster through it
        children_before = _children(os.getpid())  # not Ray's: the reaper leaves them alone
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        start_reaper(exclude=children_before)
        return True
    resolve(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - any connection problem is one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpamoInputError("--address", f"cannot join the Ray cluster at {address!r}: {first}") from None
    return True


def disconnect() -> None:
    """Shut Ray down and release the reaper (which then ends whatever of this driver's Ray is still running)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    while _REAPER_PIPES:
        os.close(_REAPER_PIPES.pop())


def is_client(address: str | None) -> bool:
    """Whether `address` joins a cluster from outside, as a Ray client (`ray://HOST:PORT`)."""
    return bool(address) and address.startswith("ray://")


def address_for_children(address: str | None) -> str:
    """The address a child process of this driver joins the same Ray with (search.segment_run): the `ray://`
    address this driver joined as a Ray client, else the GCS address of the Ray it is connected to (its own local
    one, or the cluster's)."""
    import ray

    return address if is_client(address) else ray.get_runtime_context().gcs_address


def resolve(address: str) -> str:
    """HOST:PORT (or ray://HOST:PORT) that `address` means, checked to answer (and to accept this driver's token);
    `auto` is looked up as Ray does."""
    if address == "auto":
        from ray._private.services import get_ray_address_from_environment

        found = get_ray_address_from_environment("auto", None)
        if not found:
            raise SpamoInputError("--address", "auto found no running cluster on this machine (no RAY_ADDRESS and "
                                               "no registration of a `ray start`): give HOST:PORT, or run without "
                                               "--address for a local search")
        reachable(found, stale_hint=True)
    else:
        found = address
        reachable(found)
    if not found.startswith("ray://"):
        check_token(found)
    return found


def reachable(address: str, timeout_s: float = PROBE_TIMEOUT_S, stale_hint: bool = False) -> None:
    """Refuse at once an address nothing listens on (Ray itself retries for about 20 s before giving up)."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise SpamoInputError("--address", f"expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        cause = ("; it is the registration of an earlier `ray start` whose head no longer runs" if stale_hint
                 else "; is the head node running (`ray start --head`), and is the port right?")
        raise SpamoInputError("--address", f"nothing answers at {host}:{port} ({exc.strerror or exc}){cause}") \
            from None


def check_token(address: str) -> None:
    """One request to the cluster's GCS with this shell's token: a missing or wrong token is refused in a second."""
    from ray._raylet import GcsClient

    try:
        with _quiet_stderr():
            GcsClient(address=address).internal_kv_get(b"spamo-probe", None, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - classified below; anything else is left to ray.init
        text = f"{type(exc).__name__}: {exc}"
        if "Authentication" in text or "InvalidAuthToken" in text or "Unauthenticated" in text:
            which = "a token that is not the cluster's" if token_available() else "no Ray token"
            raise SpamoInputError("--address", f"the Ray cluster at {address} refused this driver ({which}): "
                                               f"{TOKEN_HELP}") from None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (Ray's C++ client logs its retries there) for the duration of a probe."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def token_available() -> bool:
    """Whether this driver would present a Ray token (the token itself is never read here)."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "disabled":
        return False
    has_token = bool(os.environ.get("RAY_AUTH_TOKEN")) or bool(os.environ.get("RAY_AUTH_TOKEN_PATH")) \
        or (Path.home() / ".ray" / "auth_token").is_file()
    return has_token and mode in ("token", "")


def trial_resources(cpus: float, gpus: float, log=print) -> dict:
    """CPUs and GPUs per trial (or per run); the GPU share is 0 on a cluster without GPUs."""
    import ray

    gpus_in_cluster = ray.cluster_resources().get("GPU", 0)
    if gpus > 0 and gpus_in_cluster == 0:
        log("no GPU in the cluster: trials run on CPU (GPU share 0)")
        gpus = 0.0
    return {"cpu": cpus, "gpu": gpus}


def check_share_runs(precisions, gpus: float, runs: str, option: str, requested: float) -> None:
    """Refuse an attention precision that runs without a GPU share (`gpus`, from `trial_resources`) cannot compute
    (`spamo.training.check_precision`), before any of them starts; `runs`, `option` and `requested` word the line."""
    if gpus > 0:
        return
    from spamo.training import check_precision  # torch: imported with the search, not with the options

    why = f"{runs} have no GPU share ({option} {requested:g}" + (", none in the cluster)" if requested else ")")
    for precision in sorted(precisions):
        check_precision(precision, "cpu", why)


def _children(pid: int) -> set[int]:
    """Live child processes of `pid` (from /proc; empty where /proc is not there)."""
    found = set()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2:].split()[1]) == pid:
                found.add(int(entry))
    return found


def start_reaper(exclude: set[int] = frozenset()) -> subprocess.Popen | None:
    """Start the reaper of this driver's Ray processes (see search/reaper.py; `exclude`: children of the driver
    that are not Ray's); it ends itself with the driver."""
    if not os.path.isdir("/proc"):
        return None
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen([sys.executable, str(REAPER), str(os.getpid()),
                                    ",".join(str(p) for p in sorted(exclude))], stdin=read_end,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
    except OSError:
        os.close(write_end)
        return None
    finally:
        os.close(read_end)
    os.set_inheritable(write_end, False)  # only this driver holds it: the reaper sees EOF when the driver is gone
    _REAPER_PIPES.append(write_end)
    return process
