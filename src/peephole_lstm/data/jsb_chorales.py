"""JSB Chorales: polyphonic music prediction on Bach's four-part chorales, from the copy inside music21.

One of the three datasets of Greff et al. (2017), "LSTM: A Search Space Odyssey", in the form of
Boulanger-Lewandowski, Bengio & Vincent (2012): each chorale is a piano roll quantised to quarter notes
(one frame per quarter-note beat) over the 88 piano keys, MIDI pitches 21..108, a key being on in a frame
when a note of that pitch sounds at the frame's start (quantize="beat", the default: at most one key per
voice, as in the published set; "during": at any time during the frame); the model reads frames 0..t and predicts which keys are on in frame t + 1 (task
`multilabel`, one Bernoulli per key).

The scores are the MusicXML files of music21's corpus (`music21/corpus/bach/*.mxl`, part of its wheel: no
download). What differs from the published set (382 chorales, the split of Allan & Williams 2005): this is
music21's set, only the four voices (Soprano, Alto, Tenor, Bass) are read (some files add instruments
that double or decorate them), repeats are not expanded, and the split is our own (see `split_of`), so NLL
values are comparable in kind, not to the digit, with the papers'.

Parsing ~400 MusicXML files takes minutes, so their notes are cached as one compressed .npz (written
atomically; rebuilt when missing or unreadable) keyed by the files and this module's format version.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from peephole_lstm.atomic import atomic_write
from peephole_lstm.data.base import PAD_TARGET, DataError, SplitDataModule, TaskSpec, check_choice, check_int

LOWEST_PITCH, HIGHEST_PITCH = 21, 108  # A0..C8, the piano's keys as MIDI numbers
NOTES = HIGHEST_PITCH - LOWEST_PITCH + 1  # 88
VOICES = ("soprano", "alto", "tenor", "bass")
QUANTIZE = ("during", "beat")  # piano_roll: a key is on when its note sounds during the frame / on its beat
NOT_CHORALES = ("bwv846",)  # the corpus folder also holds the C major prelude of the Well-Tempered Clavier
# Percent of works per split, by the hash bucket (0..99) of the work's name (split_of).
SPLIT_BUCKETS = {"train": range(0, 60), "val": range(60, 80), "test": range(80, 100)}
# Bump when what the cache holds changes (note_spans: which parts, offsets, columns): old caches are then ignored.
# The quantisation is applied on loading, so both `quantize` settings share one cache.
CACHE_FORMAT = 1
INSTALL_MUSIC21 = "pip install music21, or pip install -e '.[train]'"


def _music21_dir() -> Path:
    """music21's folder, found without importing it (the import takes seconds; a cache hit needs none)."""
    spec = importlib.util.find_spec("music21")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"data=jsb_chorales reads the Bach chorales that ship with music21: {INSTALL_MUSIC21}")
    return Path(next(iter(spec.submodule_search_locations)))


def chorale_files() -> list[Path]:
    """The chorales' MusicXML files in music21's corpus, sorted by name (the Well-Tempered Clavier prelude
    that shares the folder left out)."""
    folder = _music21_dir() / "corpus" / "bach"
    files = sorted(p for p in folder.glob("*.mxl") if p.stem not in NOT_CHORALES)
    if not files:
        raise DataError(f"{folder}: no .mxl chorales found; is music21's corpus installed with it?")
    return files


def work_of(name: str) -> str:
    """The chorale a file holds, its variant suffix removed: bwv248.12-2.mxl and bwv248.12.mxl -> bwv248.12."""
    return Path(name).stem.split("-")[0]


def split_of(name: str) -> str:
    """"train", "val" or "test" by the SHA-256 of the file's work (work_of) modulo 100: buckets 0-59 train,
    60-79 val, 80-99 test. Fixed (no seed), independent of which other files exist, and variants of one
    chorale always land in the same split."""
    bucket = int(hashlib.sha256(work_of(name).encode()).hexdigest(), 16) % 100
    return next(split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def note_spans(score, name: str = "score") -> np.ndarray:
    """(notes, 4) int64: floor(onset), ceil(onset), ceil(release) in quarter notes and the MIDI pitch of every
    note and chord tone of a music21 score's four voices, all a piano roll needs (piano_roll).

    Offsets count from the first bar's first beat: a pickup measure starts at offset 0 but not on a beat,
    and its padding is added (an eighth-note pickup would otherwise shift every frame by half a beat).
    Grace notes (no duration) are skipped; a tied continuation sounds in the same frames either way. The
    parts named Soprano, Alto, Tenor and Bass are read (a name may go on, as in "Soprano Oboe 1,2"); a
    score without such parts is read whole.
    """
    parts = list(score.parts) if hasattr(score, "parts") else []
    voices = [p for p in parts if (p.partName or "").strip().lower().startswith(VOICES)]
    sources = voices or parts or [score]
    first = sources[0].getElementsByClass("Measure").first()
    shift = first.paddingLeft if first is not None else 0
    spans = []
    for part in sources:
        for element in part.flatten().notes:  # offsets from the part's start, which is the score's
            length = element.quarterLength
            if length <= 0:
                continue
            # exact: music21 keeps Fractions for tuplets, so floor/ceil see no rounding error
            onset, release = element.offset + shift, element.offset + shift + length
            for pitch in element.pitches:
                spans.append((math.floor(onset), math.ceil(onset), math.ceil(release), pitch.midi))
    if not spans:
        raise DataError(f"{name}: no notes")
    spans = np.array(spans, dtype=np.int64)
    out_of_range = sorted(set(spans[(spans[:, 3] < LOWEST_PITCH) | (spans[:, 3] > HIGHEST_PITCH), 3].tolist()))
    if out_of_range:
        raise DataError(f"{name}: MIDI pitches {out_of_range} lie outside the piano's {LOWEST_PITCH}..{HIGHEST_PITCH}")
    return spans


def piano_roll(spans: np.ndarray, quantize: str = "beat") -> np.ndarray:
    """(frames, 88) bool piano roll, one frame per quarter note, from note_spans.

    Frame t covers quarter notes [t0 + t, t0 + t + 1), t0 = the first onset's beat; key p - 21 is on in it
    when a note of MIDI pitch p sounds, for quantize="during", at any time during the frame (onset < its
    end and release > its start: a voice moving in eighths has two keys on), or for quantize="beat", at the
    frame's start (onset <= beat < release: at most one key per voice; a note between beats is lost).
    """
    check_choice("quantize", quantize, QUANTIZE)
    floor_on, ceil_on, ceil_release, pitch = spans.T
    start = int(floor_on.min())
    roll = np.zeros((int(ceil_release.max()) - start, NOTES), dtype=bool)
    first = floor_on if quantize == "during" else ceil_on
    for a, b, p in zip(first - start, ceil_release - start, pitch - LOWEST_PITCH):
        roll[a:b, p] = True
    return roll


def parse_note_spans(path: Path) -> np.ndarray:
    try:
        from music21 import converter
    except ImportError as e:
        raise ImportError(f"data=jsb_chorales parses the chorales with music21: {INSTALL_MUSIC21} ({e})") from e
    # Our own cache holds what is needed: music21's pickles of whole scores (in its scratch folder) are
    # neither read nor written.
    return note_spans(converter.parseFile(str(path), forceSource=True, storePickle=False), path.name)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peephole_lstm"


def _cache_path(files: list[Path], cache_dir: Path) -> Path:
    from importlib.metadata import version

    key = hashlib.sha256(repr((CACHE_FORMAT, version("music21"), [(p.name, p.stat().st_size) for p in files]))
                         .encode()).hexdigest()[:16]
    return cache_dir / f"jsb_chorales-{key}.npz"


def _read_cache(path: Path, names: list[str]) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as z:
            cached, counts, spans = z["names"].tolist(), z["counts"], z["spans"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        warnings.warn(f"{path}: unreadable chorale cache ({e}); parsing the chorales again")
        return None
    if cached != names or counts.sum() != len(spans) or spans.shape[1:] != (4,):
        warnings.warn(f"{path}: the chorale cache does not match the chorale files; parsing them again")
        return None
    return dict(zip(names, np.split(spans, np.cumsum(counts)[:-1])))


def _write_cache(path: Path, spans: dict[str, np.ndarray]) -> None:
    """Atomically (peephole_lstm.atomic): a reader (another job of a multirun) sees no file or a complete
    one, never half of one."""
    atomic_write(path, lambda f: np.savez_compressed(
        f, names=np.array(list(spans)), counts=np.array([len(s) for s in spans.values()]),
        spans=np.concatenate(list(spans.values()))))


def load_note_spans(files: list[Path], cache_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """{file name: note_spans} of `files`, from the cache when it holds exactly these files (its key covers
    music21's version, the files' names and sizes and CACHE_FORMAT), else parsed and cached."""
    path = _cache_path(files, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    names = [p.name for p in files]
    spans = _read_cache(path, names)
    if spans is None:
        spans = {p.name: parse_note_spans(p) for p in files}
        _write_cache(path, spans)
    return spans


class ChoraleDataset(Dataset):
    """Item i: (frames 0..T-2, frames 1..T-1) of chorale i as float tensors: inputs and next-frame targets."""

    def __init__(self, rolls: list[np.ndarray]) -> None:
        self.rolls = [torch.from_numpy(r.astype(np.float32)) for r in rolls]

    def __len__(self) -> int:
        return len(self.rolls)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        roll = self.rolls[i]
        return roll[:-1], roll[1:]


def pad_batch(items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Pads to the batch's longest chorale: inputs with silence (0), targets with PAD_TARGET, which the
    loss and metrics of task multilabel leave out. (A forward-only network's outputs at real frames do not
    depend on what follows them, so the padded inputs change nothing there.)"""
    xs, ys = zip(*items)
    return pad_sequence(list(xs), batch_first=True), pad_sequence(list(ys), batch_first=True, padding_value=PAD_TARGET)


class JSBChoralesDataModule(SplitDataModule):
    """Next-frame prediction of Bach chorale piano rolls (task `multilabel`, 88 keys; module docstring).

    The split is by work (split_of: a fixed hash rule, about 60/20/20, the same for every seed); `seed`
    orders the training batches. Files whose piano roll equals an earlier file's (in name order) are
    dropped, so no chorale is in two splits. `limit_chorales` keeps the first N chorales of each split in
    name order, parsing only those (quick runs). `quantize`: which notes a frame holds (piano_roll).
    `cache_dir`: where the parsed notes are kept (null: $XDG_CACHE_HOME/peephole_lstm, else
    ~/.cache/peephole_lstm).
    """

    collate_fn = staticmethod(pad_batch)

    def __init__(
        self,
        quantize: str = "beat",
        batch_size: int = 16,
        limit_chorales: int | None = None,
        cache_dir: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_choice("quantize", quantize, QUANTIZE)
        self.quantize = quantize
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.limit_chorales = None if limit_chorales is None else check_int("limit_chorales", limit_chorales, 1)
        self.cache_dir = cache_dir
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.datasets: dict[str, ChoraleDataset] | None = None
        self.names: dict[str, list[str]] | None = None

    def _files(self) -> list[Path]:
        files = chorale_files()
        if self.limit_chorales is None:
            return files
        kept, count = [], dict.fromkeys(SPLIT_BUCKETS, 0)
        for p in files:
            split = split_of(p.name)
            if count[split] < self.limit_chorales:
                kept.append(p)
                count[split] += 1
        return kept

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        spans = load_note_spans(self._files(), self.cache_dir)
        names: dict[str, list[str]] = {split: [] for split in SPLIT_BUCKETS}
        seen: set[bytes] = set()
        for name, notes in spans.items():
            # Duplicates are found on the "during" roll whatever `quantize` is, so both settings use one file set.
            during = piano_roll(notes, "during")
            key = hashlib.sha256(np.packbits(during).tobytes() + str(during.shape).encode()).digest()
            if key in seen or len(during) < 2:  # a duplicate, or too short to predict a next frame
                continue
            seen.add(key)
            names[split_of(name)].append(name)
        for split, kept in names.items():
            if not kept:
                raise DataError(f"data=jsb_chorales: the {split} split is empty (limit_chorales={self.limit_chorales})")
        self.names = names
        self.datasets = {split: ChoraleDataset([piano_roll(spans[n], self.quantize) for n in kept])
                         for split, kept in names.items()}

    @property
    def spec(self) -> TaskSpec:
        self.setup()
        keys = [f"midi{p}" for p in range(LOWEST_PITCH, HIGHEST_PITCH + 1)]
        return TaskSpec(task="multilabel", input_size=NOTES, output_size=NOTES, target_names=keys)
