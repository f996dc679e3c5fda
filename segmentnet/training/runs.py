"""Run folders: a folder holds one training run, and one training at a time writes into it.

- Identity: a run has a run id, written into the folder's ownership record (files.OWNER_FILE),
  config.json and every checkpoint. A checkpoint of the previous release has no run id: it belongs
  to the folder it lies in.
- Lock: while a training writes into a folder it holds an exclusive lock on LOCK_FILE there. It is a
  POSIX record lock (fcntl.lockf): the kernel drops it when the process ends, however it ends, so a
  stale lock file never blocks; data loader workers forked from the process do not inherit it; and
  it works on NFS. Only the process that writes the run (rank 0 under torchrun) takes it.
- claim_run_folder decides, under that lock, whether a training may write into a folder: a new,
  empty or leftover folder (written by TrainSegmentNet, holding no checkpoint and no complete record
  of a finished epoch in metrics.jsonl: a run that failed before its first one) starts a run there; a
  folder of the same run continues it; anything else is refused, naming the way out. The lock file
  and metrics.jsonl are opened without following links (files.open_no_follow).
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from ..core.checkpoint import read_progress
from ..core.distributed import DistEnv, broadcast_from_main
from ..core.errors import ConfigError, DataError, SegmentNetError
from ..core.files import (MAX_JSON_BYTES, OWNER_FILE, mark_owned, open_no_follow, owner_of, read_regular,
                          write_text_atomic)
from ..core.jsonfile import loads as json_loads
from ..core.outputs import refuse_input_data, writing
from ..results import visualize

TOOL = "TrainSegmentNet"
LOCK_FILE = ".segmentnet-train.lock"
CHECKPOINTS = ("last.pt", "best.pt")
METRICS = "metrics.jsonl"


def new_run_id() -> str:
    """Sortable by start time, unique: 20260102-130405-3fa9c1."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class RunLock:
    """An exclusive lock on `folder`/LOCK_FILE, held until release() (or the process's end)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            print(f"warning: no file locks here: nothing stops a second training from writing into "
                  f"{self.path.parent} at the same time", file=sys.stderr)
            return self
        with writing(self.path):  # (never through a link: a copied folder's link to ~/.bashrc would empty it)
            fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT, "the lock file")
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise ConfigError(
                    f"run folder {self.path.parent} is in use: another training ({holder}) is writing into it right "
                    f"now, and two at once would overwrite each other's checkpoints and mix their metrics. Wait for "
                    f"it to finish (or stop it), or choose another --out") from None
            print(f"warning: cannot lock {self.path} ({exc.strerror}; the file system has no locks?): nothing stops "
                  f"a second training from writing into {self.path.parent} at the same time", file=sys.stderr)
            return self
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        # The file stays: removing it would let a process that opened it just before lock a file that
        # no longer has a name while a third locks a new one. An unlocked file blocks nobody.
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class FolderState:
    kind: str                   # new (absent or empty), leftover (ours, nothing finished), run, foreign
    run_id: str | None = None   # from the ownership record; None: none recorded (previous release)
    why: str = ""               # foreign: what is in it
    record: dict | None = None  # the ownership record
    checkpoint: bool = True     # run: it holds last.pt or best.pt (False: finished epochs, checkpoints gone)


def folder_state(folder: Path) -> FolderState:
    folder = Path(folder)
    if not folder.is_dir():
        return FolderState("new")
    # The lock file alone leaves a folder new; a link or anything else by that name is no lock file of ours.
    names = sorted(p.name for p in folder.iterdir()
                   if p.name != LOCK_FILE or p.is_symlink() or not p.is_file())
    if not names:
        return FolderState("new")
    has_checkpoint = any((folder / name).is_file() for name in CHECKPOINTS)
    record = owner_of(folder)
    if record is not None:
        if record["tool"] != TOOL:
            return FolderState("foreign", why=f"it was written by {record['tool']}, not {TOOL}")
        run_id = record.get("run_id") if isinstance(record.get("run_id"), str) else None
        if has_checkpoint or finished_epochs(folder / METRICS):  # a run, even with its checkpoints deleted
            return FolderState("run", run_id, record=record, checkpoint=has_checkpoint)
        return FolderState("leftover", run_id, record=record)
    if has_checkpoint and "config.json" in names:  # a run folder of the previous release: no ownership record
        return FolderState("run")
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return FolderState("foreign", why=f"it holds files that {TOOL} did not write ({shown})")


def progress_text(epoch: int, step: int) -> str:
    return f"batch {step} of epoch {epoch + 1}" if step else f"the end of epoch {epoch}"


@dataclass
class RunFolder:
    path: Path
    run_id: str
    lock: RunLock | None = None
    forked_from: dict | None = None     # a resumed checkpoint of another run (or another folder)
    notes: list[str] = field(default_factory=list)


def claim_run_folder(out: Path, resume: Path | None = None, state: dict | None = None,
                     resume_older: bool = False) -> RunFolder:
    """Check, lock and mark `out` for a training (a new run, or `state` resumed from `resume`).

    Raises ConfigError or DataError saying why the folder cannot be used and what to do; on success
    the folder holds the ownership record with the run id, and the returned RunFolder holds the lock.
    """
    out = Path(out)
    refuse_input_data(out, "run folder")  # (DataSeparate --force would replace it with the dataset)
    if out.exists() and not out.is_dir():
        raise DataError(f"run folder {out} is an existing file, not a folder; choose another --out")
    before = folder_state(out)
    if before.kind == "foreign":
        raise DataError(f"run folder {out} cannot be used: {before.why}; a training never writes into such a "
                        f"folder. Choose a new or empty --out")
    created = not out.exists()
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out)
    try:
        lock.acquire()
        folder = _decide(out, folder_state(out), resume, state, resume_older)  # under the lock: current
        folder.lock = lock
        facts = {"run_id": folder.run_id}
        if folder.forked_from:
            facts["forked_from"] = folder.forked_from
        with writing(out / OWNER_FILE):
            mark_owned(out, TOOL, **facts)
        return folder
    except BaseException:
        lock.release()
        if created:  # refused: leave nothing behind
            (out / LOCK_FILE).unlink(missing_ok=True)
            try:
                out.rmdir()
            except OSError:
                pass
        raise


def _decide(out: Path, now: FolderState, resume, state, resume_older: bool) -> RunFolder:
    if now.kind == "foreign":  # appeared since the first look
        raise DataError(f"run folder {out} cannot be used: {now.why}; choose a new or empty --out")
    if resume is None:
        if now.kind == "run" and not now.checkpoint:
            raise ConfigError(f"run folder {out} holds a run that finished epochs (its {METRICS} records them) but "
                              f"no checkpoint ({' or '.join(CHECKPOINTS)}: deleted or moved?); a new run there would "
                              f"discard its records. Pass a new --out, or remove the folder yourself")
        if now.kind == "run":
            raise ConfigError(f"run folder {out} already holds a run: pass a new --out, or --resume "
                              f"{out / 'last.pt'} to continue it")
        folder = RunFolder(out, new_run_id())
        if now.kind == "leftover":
            drop_leftovers(out)
            folder.notes.append(f"{out} held a run that stopped before its first checkpoint: starting over there")
        return folder

    resume = Path(resume)
    own = resume.parent.resolve() == out.resolve()
    ckpt_id = state.get("run_id")
    same = (ckpt_id == now.run_id) if ckpt_id is not None else (own and now.kind == "run")
    if now.kind == "run" and not same:
        theirs = f"run {now.run_id}" if now.run_id else "a run of an earlier SegmentNet release"
        mine = f"run {ckpt_id}" if ckpt_id else ("its own run" if own else "a run of an earlier release")
        way = (f"leave out --out to continue it in its own folder {resume.parent}, or give" if not own else "give")
        raise ConfigError(
            f"run folder {out} holds another run ({theirs}) than checkpoint {resume} ({mine}): resuming there "
            f"would overwrite its checkpoints and mix the two runs' metrics. To continue the checkpoint, {way} a "
            f"new or empty --out (it then continues as a new run there; {out} stays as it is)")
    if same:
        # A folder of the previous release gets a run id now; its checkpoints without one stay its own.
        folder = RunFolder(out, now.run_id or state.get("run_id") or new_run_id(),
                           forked_from=(now.record or {}).get("forked_from"))
        last = out / "last.pt"
        if last.is_file() and resume.resolve() != last.resolve():
            later = read_progress(last)
            mine = (state["epoch"], state["step_in_epoch"])
            if later is None:  # the recovery path: last.pt is damaged, best.pt is not
                folder.notes.append(f"{last} cannot be read: continuing from {resume}; the next save replaces it")
            elif later[1:] > mine and not resume_older:
                raise ConfigError(
                    f"checkpoint {resume} is at {progress_text(*mine)}, but its run folder {out} has a later "
                    f"last.pt (at {progress_text(*later[1:])}): resuming it there would discard what came after. "
                    f"Continue with --resume {last}; or continue from {resume.name} as a new run in a new folder "
                    f"with --out NEW; or, to discard the later part in {out}, add --resume-older true")
        return folder

    folder = RunFolder(out, new_run_id(), forked_from={"run_id": ckpt_id, "checkpoint": str(resume),
                                                       "epoch": state["epoch"],
                                                       "step_in_epoch": state["step_in_epoch"]})
    if now.kind == "leftover":
        drop_leftovers(out)
    source = resume.parent / METRICS
    source_state = folder_state(resume.parent)
    if source.is_file() and not own and source_state.kind == "run" and source_state.run_id == ckpt_id:
        records = [r for r in read_metrics(source) if r["epoch"] <= state["epoch"]]
        write_metrics(out / METRICS, records)  # the curves continue from the epochs the checkpoint holds
    folder.notes.append(f"continuing checkpoint {resume} as a new run {folder.run_id} in {out}"
                        + (f" (a fork of run {ckpt_id})" if ckpt_id else ""))
    return folder


def finished_epochs(path: Path) -> bool:
    """Whether a metrics.jsonl may hold a complete record (a finished epoch); one that cannot be read
    counts as holding one, so that a folder is never taken for a leftover without knowing."""
    if not (path.exists() or path.is_symlink()):
        return False
    if path.is_symlink() or not path.is_file():  # (reading a fifo would hang)
        return True
    try:
        lines = read_regular(path, "the metrics file", MAX_JSON_BYTES).decode(errors="replace").splitlines()
    except (OSError, DataError):
        return True
    for line in lines:
        try:
            record = json_loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and type(record.get("epoch")) is int:
            return True
    return False


def append_metrics(path: Path, record: dict) -> None:
    """Add one epoch's record to metrics.jsonl, never through a link planted at its name."""
    fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "the metrics file")
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(record) + "\n")


def drop_leftovers(out: Path) -> None:
    """What a run that stopped before its first checkpoint left, besides config.json (rewritten)."""
    (out / METRICS).unlink(missing_ok=True)


def read_metrics(path: Path) -> list[dict]:
    """The complete records of a metrics.jsonl, for resuming: a line that is not one (the half-written
    last line of a process killed while appending, or damage) is left out with a warning, since the
    resume path is the recovery path and must not be blocked by it."""
    return visualize.read_metrics(path, repair=True)


def write_metrics(path: Path, records: list[dict]) -> None:
    with writing(path):
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def prepare_run_dir(cfg, env: DistEnv, resume_state: dict | None = None, held: ExitStack | None = None):
    """The run folder, claimed for this run (claim_run_folder): a new run, the continuation of
    the resumed checkpoint's run, or a fork of it into a new folder; never another run's folder.

    Rank 0 names, checks, locks and marks it and tells the others (the default name holds the time),
    so that all agree and stop together. Returns the RunFolder: on rank 0 with the lock, released
    when `held` closes (without `held`, when the process ends); the other ranks write nothing.
    """
    folder, problem = None, None
    out = Path(cfg.out) if cfg.out else (Path(cfg.resume).parent if cfg.resume else
                                         Path("runs") / f"{cfg.dataset}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    if env.is_main:
        try:
            folder = claim_run_folder(out, Path(cfg.resume) if cfg.resume else None, resume_state, cfg.resume_older)
        except SegmentNetError as exc:
            problem = exc
        else:
            if held is not None:
                held.callback(folder.lock.release)
            for note in folder.notes:
                print(note)
    out, run_id, problem = broadcast_from_main((out, folder.run_id if folder else None, problem), env)
    if problem:
        raise problem
    return folder if env.is_main else RunFolder(out, run_id)


def resume_hint(run_dir) -> str:
    """How to go on after a run stopped with an error: from its last.pt, or, before its first
    checkpoint, by running again (the folder, holding no checkpoint, is then reused)."""
    last = Path(run_dir) / "last.pt" if run_dir else None
    if last is None:
        return "continue from the last finished epoch with --resume <run folder>/last.pt"
    if last.is_file():
        return f"continue from the last finished epoch with --resume {last}"
    return (f"run the same command again: the run folder {run_dir} holds no checkpoint yet, so a new run starts "
            f"over in it (or remove the folder)")


def drop_metrics_after(path: Path, epoch: int) -> None:
    """On resume, forget records of epochs the checkpoint does not include (a crash between the two
    writes, or --resume-older), and any line cut short (a crash while appending)."""
    if path.exists():
        write_metrics(path, [record for record in read_metrics(path) if record["epoch"] <= epoch])


