"""Deterministic generator of a realistic game build (v1) and its patch (v2).

The generator first *plans* both trees as lists of segments per file, then writes them:

* ``Gen``  — bytes freshly generated from a blake3 XOF keyed by (seed, label);
* ``Lit``  — small freshly generated literal bytes (archive headers/index tables, text);
* ``Copy`` — a byte range copied from a v1 file (only used in v2).

Every v2 byte comes from exactly one segment, so the ground truth is exact by
construction: ``new_bytes`` is the total length of the ``Gen``/``Lit`` segments of v2
(everything the generator created for v2, including rewritten archive headers and index
tables and edited text lines), and ``copied_bytes`` the total length of its ``Copy``
segments. ``new_bytes + copied_bytes == v2_bytes`` is asserted.

Tree layout (v1, ``size`` bytes in total, approximately):

* ``Content/Paks/*.pak`` (~70 %): pak-like archives — a 48-byte header, an index table
  of 40-byte entries, then records of log-uniform size 2 KiB–512 KiB with
  incompressible content (like compressed assets);
* ``Content/Movies``, ``Content/Audio`` (~24 %): incompressible media files;
* ``Binaries/**``: three executables (mode 0755);
* ``Config``, ``Scripts``, ``Localization``: a few thousand text files of 200 B–20 KiB;
* an empty file (``Engine/empty.marker``) and an empty directory (``Saved/Logs``).

v2 contains ~4 % new bytes: archive records replaced / inserted / removed (and those
archives' headers and index tables rewritten), media replaced wholesale, a patched
executable, edited text files (only the changed lines count as new), added files, deleted
files, renamed files and one renamed directory (``Localization/fr`` → ``Localization/fr-FR``).

Memory stays bounded: the plan holds metadata plus the v1 text files (≲ 20 MiB at 1 GiB),
and writing streams in blocks of at most 4 MiB, copying unchanged ranges with
``os.copy_file_range`` (falling back to pread/write).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import random
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import blake3

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

NEW_FRACTION = 0.04  # target share of new bytes in v2
_BLOCK = 4 * MiB  # streaming block size for generated/copied data
_SMALL_GEN = 256 * KiB  # generated segments below this go through the write buffer

#: Archive record sizes (log-uniform) per profile.  ``mixed``: scripts, small meshes and
#: sounds as well as textures, 2 KiB–512 KiB (fine-grained edits, the harsh case);
#: ``assets``: texture/mesh/audio-sized entries, 64 KiB–8 MiB.
RECORD_PROFILES = {"mixed": (2 * KiB, 512 * KiB), "assets": (64 * KiB, 8 * MiB)}

PAK_MAGIC = b"TDPAK\x00\x01\x00"
PAK_VERSION = 3
# magic, version, record count, index offset, data offset, build id
PAK_HEADER = struct.Struct("<8sIIQQ16s")
# record id, offset, length, flags, content hash
PAK_ENTRY = struct.Struct("<QQII16s")


# --------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class Copy:
    """``length`` bytes copied from v1 file ``src`` (relative path) at ``offset``."""

    src: str
    offset: int
    length: int


@dataclass(frozen=True)
class Gen:
    """``length`` fresh pseudo-random bytes: blake3 XOF of ``key``."""

    key: bytes
    length: int
    kind: str


@dataclass(frozen=True)
class Lit:
    """Fresh literal bytes (headers, index tables, text)."""

    data: bytes
    kind: str

    @property
    def length(self) -> int:
        return len(self.data)


Seg = Copy | Gen | Lit


@dataclass
class FilePlan:
    path: str
    segs: list[Seg]
    executable: bool = False

    @property
    def size(self) -> int:
        return sum(s.length for s in self.segs)


@dataclass
class TreePlan:
    files: dict[str, FilePlan] = field(default_factory=dict)
    empty_dirs: list[str] = field(default_factory=list)

    def add(self, plan: FilePlan) -> None:
        if plan.path in self.files:
            raise AssertionError(f"duplicate path {plan.path}")
        self.files[plan.path] = plan

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


@dataclass
class GroundTruth:
    """What the generator did. ``new_bytes`` = bytes of v2 freshly created (not copied)."""

    seed: int
    size: int
    v1_bytes: int
    v2_bytes: int
    v1_files: int
    v2_files: int
    new_bytes: int
    copied_bytes: int
    new_fraction: float
    new_by_kind: dict[str, int]
    ops: dict[str, int]
    renamed_files: list[tuple[str, str]]
    renamed_dirs: list[tuple[str, str]]
    deleted_files: list[str]
    added_files: list[str]
    executables: list[str]
    empty_files: list[str]
    empty_dirs: list[str]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False)


# --------------------------------------------------------------------------- helpers


def _key(seed: int, *parts: object) -> bytes:
    label = "/".join(str(p) for p in parts)
    return blake3.blake3(f"thetadist-gamebuild/{seed}/{label}".encode()).digest()


def _loguniform(rng: random.Random, lo: float, hi: float) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


_SYLLABLES = [
    "ka", "to", "ri", "mon", "el", "ar", "quo", "zen", "li", "sta", "ver", "ne", "dor",
    "ix", "um", "pha", "gri", "tal", "bo", "sen", "ra", "vel", "ost", "kir", "an", "mu",
]  # fmt: skip


class _Text:
    """Text-like content: ini configs, lua scripts and localisation string tables."""

    def __init__(self, rng: random.Random) -> None:
        self.words = ["".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(800)]

    def line(self, rng: random.Random, style: str) -> str:
        w = rng.choices(self.words, k=8)
        if style == "ini":
            r = rng.random()
            if r < 0.08:
                return f"[{w[0].capitalize()}{w[1].capitalize()}]"
            if r < 0.5:
                return f"{w[2].capitalize()}{w[3].capitalize()}={rng.randint(0, 100000)}"
            if r < 0.7:
                return f"b{w[2].capitalize()}={rng.choice(('True', 'False'))}"
            return f"{w[4].capitalize()}=/Game/{w[5]}/{w[6]}.{w[7]}"
        if style == "lua":
            r = rng.random()
            ind = "    " * rng.randint(0, 3)
            if r < 0.1:
                return f"function {w[0]}_{w[1]}({w[2]}, {w[3]})"
            if r < 0.18:
                return f"{ind}end"
            if r < 0.3:
                return f"{ind}-- {' '.join(w[2:8])}"
            if r < 0.45:
                return f"{ind}if {w[0]}.{w[1]} > {rng.randint(0, 999)} then"
            return f"{ind}local {w[0]} = {w[1]}.{w[2]}({w[3]}, {rng.randint(0, 9999)})"
        # localisation
        n = rng.randint(3, 14)
        sentence = " ".join(rng.choices(self.words, k=n)).capitalize()
        return f'{w[0].upper()}_{w[1].upper()}_{rng.randint(0, 9999):04d}\t"{sentence}."'

    def content(self, rng: random.Random, style: str, target: int) -> bytes:
        lines: list[str] = []
        n = 0
        while n < target:
            s = self.line(rng, style)
            lines.append(s)
            n += len(s) + 1
        return ("\n".join(lines) + "\n").encode()


@dataclass
class _Rec:
    rid: int
    length: int
    digest: bytes
    seg: Seg


def _pak_segments(recs: list[_Rec], build_id: bytes, kind: str) -> list[Seg]:
    """Header + index table (one fresh ``Lit``) followed by the record segments."""
    index_off = PAK_HEADER.size
    data_off = index_off + PAK_ENTRY.size * len(recs)
    table = bytearray(
        PAK_HEADER.pack(PAK_MAGIC, PAK_VERSION, len(recs), index_off, data_off, build_id)
    )
    off = data_off
    for r in recs:
        table += PAK_ENTRY.pack(r.rid, off, r.length, 1, r.digest)
        off += r.length
    segs: list[Seg] = [Lit(bytes(table), kind)]
    segs.extend(r.seg for r in recs)
    return segs


def _coalesce(segs: list[Seg]) -> list[Seg]:
    out: list[Seg] = []
    for s in segs:
        if s.length == 0:
            continue
        prev = out[-1] if out else None
        if (
            isinstance(s, Copy)
            and isinstance(prev, Copy)
            and prev.src == s.src
            and prev.offset + prev.length == s.offset
        ):
            out[-1] = Copy(prev.src, prev.offset, prev.length + s.length)
        else:
            out.append(s)
    return out


# --------------------------------------------------------------------------- v1 plan


@dataclass
class _V1:
    plan: TreePlan
    paks: dict[str, list[_Rec]]
    media: list[str]
    exes: list[str]
    texts: dict[str, tuple[str, bytes]]  # path -> (style, content)


_LANGS = ["en", "fr", "de", "es", "it", "ja", "ko", "pt-BR", "ru", "zh-Hans"]
_SCRIPT_DIRS = ["ai", "ui", "quests", "combat", "world", "audio", "net", "items"]


def _plan_v1(size: int, seed: int, text: _Text, records: tuple[int, int]) -> _V1:
    rec_min, rec_max = records
    rng = random.Random(f"{seed}:v1")
    plan = TreePlan()
    texts: dict[str, tuple[str, bytes]] = {}

    # small text files
    n_text = min(4000, max(24, size // 350_000))
    for i in range(n_text):
        r = rng.random()
        if i < 3:  # guarantee content in the directory that v2 renames
            style, path = "loc", f"Localization/fr/{rng.choice(text.words)}_{i}.txt"
        elif r < 0.1:
            style, path = "ini", f"Config/{rng.choice(('Default', 'Windows', 'Linux'))}"
            path += f"/{rng.choice(text.words).capitalize()}{i}.ini"
        elif r < 0.6:
            sub = rng.choice(_SCRIPT_DIRS)
            sub2 = rng.choice(text.words)
            style, path = "lua", f"Scripts/{sub}/{sub2}/{rng.choice(text.words)}_{i}.lua"
        else:
            lang = rng.choice(_LANGS)
            style, path = "loc", f"Localization/{lang}/{rng.choice(text.words)}_{i}.txt"
        data = text.content(rng, style, _loguniform(rng, 200, 20 * KiB))
        texts[path] = (style, data)
        plan.add(FilePlan(path, [Lit(data, "v1")]))
    text_bytes = sum(len(d) for _, d in texts.values())

    # executables
    exes = [
        "Binaries/Win64/Game-Win64-Shipping.exe",
        "Binaries/Linux/Game.x86_64",
        "Binaries/Linux/CrashReporter",
    ]
    exe_bytes = 0
    for j, p in enumerate(exes):
        n = max(16 * KiB, _loguniform(rng, size / 400, size / 80))
        exe_bytes += n
        plan.add(FilePlan(p, [Gen(_key(seed, "v1", "exe", j), n, "v1")], executable=True))

    # media
    media: list[str] = []
    media_budget = int(0.24 * size)
    lo, hi = max(16 * KiB, size / 512), max(64 * KiB, size / 32)
    j = 0
    while media_budget >= lo:
        n = min(media_budget, _loguniform(rng, lo, hi))
        if j % 2 == 0:
            p = f"Content/Movies/{rng.choice(text.words)}_{j:03d}.bk2"
        else:
            p = f"Content/Audio/{rng.choice(text.words)}_{j:03d}.bnk"
        plan.add(FilePlan(p, [Gen(_key(seed, "v1", "media", j), n, "v1")]))
        media.append(p)
        media_budget -= n
        j += 1

    # archives fill the rest
    rest = size - text_bytes - exe_bytes - sum(plan.files[m].size for m in media)
    n_paks = min(8, max(2, round(rest / (128 * MiB))))
    paks: dict[str, list[_Rec]] = {}
    rid = 1
    for k in range(n_paks):
        path = f"Content/Paks/pakchunk{k:02d}-Windows.pak"
        budget = rest // n_paks
        recs: list[_Rec] = []
        while True:
            est = PAK_HEADER.size + PAK_ENTRY.size * (len(recs) + 1)
            left = budget - est - sum(r.length for r in recs)
            if left < rec_min:
                break
            n = min(left, _loguniform(rng, rec_min, rec_max))
            key = _key(seed, "v1", "pak", k, rid)
            recs.append(_Rec(rid, n, key[:16], Gen(key, n, "v1")))
            rid += 1
        paks[path] = recs
        build_id = _key(seed, "v1", "build")[:16]
        plan.add(FilePlan(path, _pak_segments(recs, build_id, "v1")))

    plan.add(FilePlan("Engine/empty.marker", []))
    plan.empty_dirs.append("Saved/Logs")
    return _V1(plan, paks, media, exes, texts)


# --------------------------------------------------------------------------- v2 plan


def _copy_of(v1: TreePlan, path: str) -> list[Seg]:
    return [Copy(path, 0, v1.files[path].size)] if v1.files[path].size else []


def _plan_v2(
    v1: _V1, size: int, seed: int, text: _Text, records: tuple[int, int]
) -> tuple[TreePlan, GroundTruth]:
    rec_min, rec_max = records
    rng = random.Random(f"{seed}:v2")
    p1 = v1.plan
    target = round(NEW_FRACTION * p1.total_bytes)
    ops: dict[str, int] = {}

    def bump(name: str, n: int = 1) -> None:
        ops[name] = ops.get(name, 0) + n

    # v2 starts as an exact copy of v1, then gets modified
    files: dict[str, FilePlan] = {
        p: FilePlan(p, _copy_of(p1, p), f.executable) for p, f in sorted(p1.files.items())
    }
    renamed: list[tuple[str, str]] = []
    deleted: list[str] = []
    added: list[str] = []

    def new_so_far() -> int:
        return sum(s.length for f in files.values() for s in f.segs if not isinstance(s, Copy))

    # --- directory rename (contents untouched)
    old_dir, new_dir = "Localization/fr", "Localization/fr-FR"
    moved_dir = sorted(p for p in files if p.startswith(old_dir + "/"))
    for p in moved_dir:
        f = files.pop(p)
        files[new_dir + p[len(old_dir) :]] = FilePlan(new_dir + p[len(old_dir) :], f.segs)
    bump("dir_renamed")
    bump("files_in_renamed_dir", len(moved_dir))

    # --- text files: deletions, renames, edits
    candidates = sorted(p for p in v1.texts if p in files)
    rng.shuffle(candidates)
    n_del = max(1, len(candidates) // 50)
    n_ren = max(1, len(candidates) // 100)
    n_edit = max(2, len(candidates) // 12)
    for p in candidates[:n_del]:
        del files[p]
        deleted.append(p)
    for p in candidates[n_del : n_del + n_ren]:
        d, _, name = p.rpartition("/")
        q = f"{d}/legacy/{name}"
        files[q] = FilePlan(q, files.pop(p).segs)
        renamed.append((p, q))
    for p in candidates[n_del + n_ren : n_del + n_ren + n_edit]:
        style, data = v1.texts[p]
        starts = [0, *(m.end() for m in re.finditer(b"\n", data))][:-1]
        picks = sorted(rng.sample(range(len(starts)), min(len(starts), rng.randint(1, 5))))
        segs: list[Seg] = []
        pos = 0
        for li in picks:
            a = starts[li]
            b = data.index(b"\n", a)  # end of line content (newline kept from v1)
            segs.append(Copy(p, pos, a - pos))
            new_line = text.line(rng, style).encode()
            if rng.random() < 0.7:  # replace the line's content
                segs.append(Lit(new_line, "text_edit"))
                pos = b
                bump("text_lines_replaced")
            else:  # insert a new line before it
                segs.append(Lit(new_line + b"\n", "text_edit"))
                pos = a
                bump("text_lines_inserted")
        segs.append(Copy(p, pos, len(data) - pos))
        files[p].segs = _coalesce(segs)
        bump("text_files_edited")
    bump("text_files_deleted", n_del)
    bump("text_files_renamed", n_ren)

    # --- media: replace some wholesale, delete one, rename one
    media = list(v1.media)
    rng.shuffle(media)
    budget = int(0.3 * target)
    untouched: list[str] = []
    for j, p in enumerate(media):
        n_old = p1.files[p].size
        if n_old <= budget:
            n = max(1, int(n_old * rng.uniform(0.9, 1.1)))
            files[p].segs = [Gen(_key(seed, "v2", "media", j), n, "media_replaced")]
            budget -= n
            bump("media_replaced")
        else:
            untouched.append(p)
    if len(untouched) >= 3:
        untouched.sort(key=lambda m: (-p1.files[m].size, m))
        p = untouched.pop()  # delete the smallest
        del files[p]
        deleted.append(p)
        bump("media_deleted")
        p = untouched.pop()
        d, _, name = p.rpartition("/")
        q = f"{d}/{name.replace('_', '_v2_', 1)}"
        files[q] = FilePlan(q, files.pop(p).segs)
        renamed.append((p, q))
        bump("media_renamed")

    # --- added files: a few new scripts/strings and a new media asset
    n_add = max(3, len(v1.texts) // 100)
    for i in range(n_add):
        style = rng.choice(("lua", "loc"))
        if style == "lua":
            q = f"Scripts/dlc01/{rng.choice(text.words)}_{i}.lua"
        else:
            q = f"Localization/en/dlc01_{rng.choice(text.words)}_{i}.txt"
        hi = max(400, min(20 * KiB, int(0.1 * target) // n_add))
        data = text.content(rng, style, _loguniform(rng, 200, hi))
        files[q] = FilePlan(q, [Lit(data, "file_added")])
        added.append(q)
    add_budget = int(0.1 * target) - sum(files[q].size for q in added)
    if add_budget >= 4 * KiB:
        q = "Content/Movies/dlc01_trailer.bk2"
        files[q] = FilePlan(q, [Gen(_key(seed, "v2", "added"), add_budget, "file_added")])
        added.append(q)
    bump("files_added", len(added))

    # --- main executable patched in place (replaced and inserted byte ranges)
    exe = v1.exes[0]
    n_exe = p1.files[exe].size
    k = rng.randint(6, 16)
    stride = n_exe // k
    avg = max(64, int(0.06 * target) // k)
    segs = []
    pos = 0
    for i in range(k):
        ln = min(stride // 2, max(16, int(avg * rng.uniform(0.5, 1.5))))
        a = i * stride + rng.randrange(0, stride - ln)
        segs.append(Copy(exe, pos, a - pos))
        segs.append(Gen(_key(seed, "v2", "exe", i), ln, "exe_patch"))
        if rng.random() < 0.7:
            pos = a + ln
            bump("exe_ranges_replaced")
        else:
            pos = a
            bump("exe_ranges_inserted")
    segs.append(Copy(exe, pos, n_exe - pos))
    files[exe].segs = _coalesce(segs)

    # --- archives: records replaced / inserted / removed until the target is met
    pak_paths = sorted(v1.paks)
    touched = pak_paths[:-1] if len(pak_paths) >= 3 else pak_paths
    index_est = sum(PAK_HEADER.size + PAK_ENTRY.size * len(v1.paks[p]) for p in touched)
    pak_budget = max(0, target - new_so_far() - index_est)
    weights = [rng.uniform(0.5, 1.5) for _ in touched]
    next_rid = 1 + max(r.rid for recs in v1.paks.values() for r in recs)
    for w, path in zip(weights, touched, strict=True):
        budget = int(pak_budget * w / sum(weights))
        recs = list(v1.paks[path])
        offs: list[int] = []
        off = PAK_HEADER.size + PAK_ENTRY.size * len(recs)
        for r in recs:
            offs.append(off)
            off += r.length
        # v1 records in v2 are copied from the v1 pak
        cur: list[_Rec] = [
            _Rec(r.rid, r.length, r.digest, Copy(path, o, r.length))
            for r, o in zip(recs, offs, strict=True)
        ]
        fresh = list(range(len(cur)))  # indexes of not-yet-touched v1 records
        rng.shuffle(fresh)
        dead: set[int] = set()
        inserts: list[tuple[int, _Rec]] = []
        inserted = removed = 0
        while budget >= rec_min:
            op = rng.random()
            # replace a record that fits the remaining budget (keeps the archive size stable)
            fit = [j for j in range(len(fresh) - 1, -1, -1) if cur[fresh[j]].length <= budget]
            if op < 0.6 and fit:
                i = fresh.pop(fit[0])
                n = max(rec_min, int(cur[i].length * rng.uniform(0.8, 1.25)))
                n = min(n, budget, rec_max)
                key = _key(seed, "v2", "pak", path, "rep", i)
                cur[i] = _Rec(cur[i].rid, n, key[:16], Gen(key, n, "archive_record_replaced"))
                budget -= n
                bump("archive_records_replaced")
            elif op < 0.85 or not fresh or cur[fresh[-1]].length > inserted - removed:
                n = min(budget, _loguniform(rng, rec_min, rec_max))
                key = _key(seed, "v2", "pak", path, "ins", next_rid)
                pos = len(cur) if rng.random() < 0.3 else rng.randrange(len(cur) + 1)
                inserts.append(
                    (pos, _Rec(next_rid, n, key[:16], Gen(key, n, "archive_record_inserted")))
                )
                next_rid += 1
                budget -= n
                inserted += n
                bump("archive_records_inserted")
            else:  # remove a record (removed bytes never exceed inserted bytes)
                i = fresh.pop()
                dead.add(i)
                removed += cur[i].length
                bump("archive_records_removed")
        by_pos: dict[int, list[_Rec]] = {}
        for pos, rec in inserts:
            by_pos.setdefault(pos, []).append(rec)
        out: list[_Rec] = []
        for i in range(len(cur) + 1):
            out.extend(by_pos.get(i, []))
            if i < len(cur) and i not in dead:
                out.append(cur[i])
        build_id = _key(seed, "v2", "build")[:16]
        files[path].segs = _coalesce(_pak_segments(out, build_id, "archive_index"))
        bump("archives_rewritten")

    plan = TreePlan(empty_dirs=list(p1.empty_dirs))
    for p in sorted(files):
        plan.add(files[p])

    by_kind: dict[str, int] = {}
    new = copied = 0
    for f in plan.files.values():
        for s in f.segs:
            if isinstance(s, Copy):
                copied += s.length
            else:
                by_kind[s.kind] = by_kind.get(s.kind, 0) + s.length
                new += s.length
    v2_bytes = plan.total_bytes
    assert new + copied == v2_bytes
    truth = GroundTruth(
        seed=seed,
        size=size,
        v1_bytes=p1.total_bytes,
        v2_bytes=v2_bytes,
        v1_files=len(p1.files),
        v2_files=len(plan.files),
        new_bytes=new,
        copied_bytes=copied,
        new_fraction=round(new / v2_bytes, 6),
        new_by_kind=dict(sorted(by_kind.items())),
        ops=dict(sorted(ops.items())),
        renamed_files=renamed,
        renamed_dirs=[(old_dir, new_dir)],
        deleted_files=sorted(deleted),
        added_files=sorted(added),
        executables=[p for p in v1.exes if p in plan.files],
        empty_files=sorted(p for p, f in plan.files.items() if f.size == 0),
        empty_dirs=list(plan.empty_dirs),
    )
    return plan, truth


# --------------------------------------------------------------------------- writing


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """Append ``length`` bytes of ``src`` at ``offset`` to ``dst`` (at its position)."""
    end = offset + length
    try:
        while offset < end:
            n = os.copy_file_range(src, dst, min(end - offset, 1 << 30), offset)
            if n == 0:
                raise OSError(errno.EIO, "short copy: source file too small")
            offset += n
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while offset < end:
        chunk = os.pread(src, min(_BLOCK, end - offset), offset)
        if not chunk:
            raise OSError(errno.EIO, "short read: source file too small")
        _write_all(dst, chunk)
        offset += len(chunk)


def _write_tree(root: Path, plan: TreePlan, src_root: Path | None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for d in plan.empty_dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in plan.files.values():
        path = root / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o755 if f.executable else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        src_fd, src_name = -1, ""
        buf = bytearray()
        try:
            for s in f.segs:
                if isinstance(s, Lit):
                    buf += s.data
                elif isinstance(s, Gen):
                    h = blake3.blake3(s.key)
                    if s.length < _SMALL_GEN:
                        buf += h.digest(length=s.length)
                    else:
                        _write_all(fd, buf)
                        buf.clear()
                        for off in range(0, s.length, _BLOCK):
                            _write_all(fd, h.digest(length=min(_BLOCK, s.length - off), seek=off))
                else:
                    if src_root is None:
                        raise AssertionError("copy segment without a source tree")
                    _write_all(fd, buf)
                    buf.clear()
                    if s.src != src_name:
                        if src_fd >= 0:
                            os.close(src_fd)
                        src_fd, src_name = os.open(src_root / s.src, os.O_RDONLY), s.src
                    _copy_range(src_fd, fd, s.offset, s.length)
                if len(buf) >= _BLOCK:
                    _write_all(fd, buf)
                    buf.clear()
            _write_all(fd, buf)
        finally:
            os.close(fd)
            if src_fd >= 0:
                os.close(src_fd)
        os.chmod(path, mode)  # independent of the umask
        if path.stat().st_size != f.size:
            raise AssertionError(f"{path}: wrote {path.stat().st_size}, planned {f.size}")


# --------------------------------------------------------------------------- API


def plan(
    *, size: int = 1 << 30, seed: int = 1, records: str = "mixed"
) -> tuple[TreePlan, TreePlan, GroundTruth]:
    """Plan both trees without writing anything (cheap; useful for inspection)."""
    if size < 4 * MiB:
        raise ValueError("size must be at least 4 MiB")
    text = _Text(random.Random(f"{seed}:vocab"))
    v1 = _plan_v1(size, seed, text, RECORD_PROFILES[records])
    v2, truth = _plan_v2(v1, size, seed, text, RECORD_PROFILES[records])
    return v1.plan, v2, truth


def generate(
    root_v1: Path, root_v2: Path, *, size: int = 1 << 30, seed: int = 1, records: str = "mixed"
) -> GroundTruth:
    """Write the v1 build to ``root_v1`` and its patched v2 to ``root_v2``.

    Both directories must not exist or be empty. Output is a deterministic function of
    (``size``, ``seed``): same paths, contents and permission bits (not mtimes).
    """
    root_v1, root_v2 = Path(root_v1), Path(root_v2)
    for r in (root_v1, root_v2):
        if r.exists() and any(r.iterdir()):
            raise FileExistsError(f"{r} exists and is not empty")
    p1, p2, truth = plan(size=size, seed=seed, records=records)
    _write_tree(root_v1, p1, None)
    _write_tree(root_v2, p2, root_v1)
    return truth


_UNITS = {"": 1, "b": 1, "k": KiB, "kib": KiB, "kb": 1000, "m": MiB, "mib": MiB,
          "mb": 1000**2, "g": GiB, "gib": GiB, "gb": 1000**3}  # fmt: skip


def parse_size(text: str) -> int:
    """Parse ``1GiB``, ``512MiB``, ``64k``, ``1000000`` ... into bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"bad size: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


_DESCRIPTION = "Generate a game build (v1) and its patch (v2); print the ground truth as JSON."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gamebuild", description=_DESCRIPTION)
    ap.add_argument("v1", type=Path)
    ap.add_argument("v2", type=Path)
    ap.add_argument("--size", type=parse_size, default=GiB, help="v1 size, e.g. 1GiB (default)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--records", choices=sorted(RECORD_PROFILES), default="mixed")
    ap.add_argument(
        "--plan-only", action="store_true", help="print the ground truth, write nothing"
    )
    args = ap.parse_args(argv)
    if args.plan_only:
        truth = plan(size=args.size, seed=args.seed, records=args.records)[2]
    else:
        truth = generate(args.v1, args.v2, size=args.size, seed=args.seed, records=args.records)
    sys.stdout.write(truth.to_json() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
