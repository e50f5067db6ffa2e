"""data=jsb_chorales: music21's Bach chorales as quarter-note piano rolls, split by a fixed hash of the work."""
import math
import sys
import warnings

import numpy as np
import pytest
import torch

from peephole_lstm.data import DataError, JSBChoralesDataModule, TaskSpec
from peephole_lstm.data.base import PAD_TARGET
from peephole_lstm.data.jsb_chorales import (
    NOTES,
    _cache_path,
    chorale_files,
    load_note_spans,
    note_spans,
    pad_batch,
    piano_roll,
    split_of,
    work_of,
)

from tests.helpers.configs import QUIET
from tests.helpers.scripts import csv_rows, explain, results, run_dirs, run_script

music21 = pytest.importorskip("music21")
from music21 import chord, meter, note, stream  # noqa: E402


def keys(roll):
    """The MIDI pitches on in each frame."""
    return [sorted((np.flatnonzero(frame) + 21).tolist()) for frame in roll]


def part(name, elements, pickup=None):
    p = stream.Part()
    p.partName = name
    if pickup is None:
        for e in elements:
            p.append(e)
        return p
    # measure 0 is a pickup of `pickup` quarter notes (its padding is the rest of the bar), then 4/4 bars
    m0 = stream.Measure(number=0)
    m0.append(meter.TimeSignature("4/4"))
    m0.paddingLeft = 4 - pickup
    done, i = 0, 0
    while done < pickup:
        m0.append(elements[i])
        done, i = done + elements[i].quarterLength, i + 1
    p.append(m0)
    m1 = stream.Measure(number=1)
    for e in elements[i:]:
        m1.append(e)
    p.append(m1)
    return p


def test_piano_roll_of_a_hand_made_score():
    s = stream.Score()
    soprano = [note.Note("C4", quarterLength=1), note.Note("D4", quarterLength=0.5), note.Note("E4", quarterLength=1),
               chord.Chord(["C4", "G4"], quarterLength=2)]  # onsets 0, 1, 1.5, 2.5
    tied = note.Note("C3", quarterLength=1.5)
    tied.tie = music21.tie.Tie("start")
    tied2 = note.Note("C3", quarterLength=1)
    tied2.tie = music21.tie.Tie("stop")
    bass = [note.Rest(quarterLength=1), tied, tied2, note.Note("A0", quarterLength=1.5)]  # C3 in [1, 3.5), A0 [3.5, 5)
    grace = note.Note("F5").getGrace()
    s.insert(0, part("Soprano", soprano))
    s.insert(0, part("Bass", [grace, *bass]))
    s.insert(0, part("Horn", [note.Note("C6", quarterLength=4)]))  # an instrument: not one of the voices
    spans = note_spans(s)
    during = piano_roll(spans, "during")
    assert during.shape == (5, NOTES) and during.dtype == bool
    # frame t = quarter note [t, t+1): a note is on in every frame it sounds in, even for part of it
    assert keys(during) == [[60], [48, 62, 64], [48, 60, 64, 67], [21, 48, 60, 67], [21, 60, 67]]
    # beat: what sounds at the frame's start (D4 at 1..1.5 starts on beat 1; E4 at 1.5 does not sound on a beat
    # before 2; A0 from 3.5 is on at beat 4)
    assert keys(piano_roll(spans, "beat")) == [[60], [48, 62], [48, 64], [48, 60, 67], [21, 60, 67]]


def test_a_pickup_measure_puts_the_frames_on_the_beats():
    """An eighth-note pickup (measure 0 padded by 3.5 beats) sits in the second half of frame 0."""
    s = stream.Score()
    s.insert(0, part("Alto", [note.Note("G4", quarterLength=0.5), note.Note("A4", quarterLength=1.5),
                              note.Note("B4", quarterLength=1)], pickup=0.5))  # beats 3.5, 4, 5.5 of the count
    spans = note_spans(s)
    assert keys(piano_roll(spans, "during")) == [[67], [69], [69, 71], [71]]
    assert keys(piano_roll(spans, "beat")) == [[], [69], [69], [71]]


def test_pitches_off_the_piano_are_a_data_error():
    s = stream.Score()
    s.insert(0, part("Bass", [note.Note("A0", quarterLength=1), note.Note("G#0", quarterLength=1)]))
    with pytest.raises(DataError, match=r"tiny.mxl: MIDI pitches \[20\] lie outside the piano's 21..108"):
        note_spans(s, "tiny.mxl")


def test_split_is_a_fixed_disjoint_rule_on_the_work():
    names = [p.name for p in chorale_files()]
    assert names == sorted(names) and len(names) == 407 and "bwv846.mxl" not in names  # the WTC prelude
    splits = {s: [n for n in names if split_of(n) == s] for s in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == len(names)  # each file in exactly one split
    assert {s: len(v) for s, v in splits.items()} == {"train": 235, "val": 86, "test": 86}  # files; ~58/21/21 %
    # pinned: a change of the rule would silently move chorales between train and test
    assert [split_of(n) for n in ("bwv1.6.mxl", "bwv108.6.mxl", "bwv102.7.mxl")] == ["train", "val", "test"]
    # variants of one chorale stay together
    assert work_of("bwv248.12-2.mxl") == "bwv248.12" == work_of("bwv248.12.mxl")
    for n in names:
        assert split_of(n) == split_of(work_of(n) + ".mxl")


def test_pad_batch_pads_inputs_with_silence_and_targets_with_the_mask_value():
    a, b = torch.ones(5, NOTES), torch.ones(3, NOTES)
    x, y = pad_batch([(a[:-1], a[1:]), (b[:-1], b[1:])])
    assert x.shape == y.shape == (2, 4, NOTES)
    assert x[1, 2:].eq(0).all() and y[1, 2:].eq(PAD_TARGET).all() and y[1, :2].eq(1).all() and y[0].eq(1).all()


def test_missing_music21_names_the_package_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "music21", None)  # what `import music21` meets when it is not installed
    with pytest.raises(ImportError, match=r"pip install music21, or pip install -e '.\[train\]'"):
        JSBChoralesDataModule(limit_chorales=1).setup()


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="quantize='onset' is not allowed"):
        JSBChoralesDataModule(quantize="onset")
    with pytest.raises(ValueError, match="limit_chorales=0 must be an integer >= 1"):
        JSBChoralesDataModule(limit_chorales=0)


def test_limited_datamodule_batches_and_its_cache(tmp_path):
    """limit_chorales=2 parses the first 2 chorales of each split (name order) and caches their notes;
    a second datamodule reads the cache (shown by editing it), and an unreadable cache is rebuilt."""
    dm = JSBChoralesDataModule(limit_chorales=2, batch_size=2, cache_dir=str(tmp_path))
    assert dm.spec == TaskSpec(task="multilabel", input_size=88, output_size=88,
                               target_names=[f"midi{p}" for p in range(21, 109)])
    assert dm.names == {"train": ["bwv1.6.mxl", "bwv10.7.mxl"], "val": ["bwv108.6.mxl", "bwv120.6.mxl"],
                        "test": ["bwv102.7.mxl", "bwv116.6.mxl"]}
    x, y = next(iter(dm.val_dataloader()))  # unshuffled: bwv108.6, bwv120.6
    rolls = [piano_roll(s) for s in load_note_spans([p for p in chorale_files() if p.name in dm.names["val"]],
                                                    tmp_path / "reference").values()]
    longest = max(map(len, rolls)) - 1
    assert x.shape == y.shape == (2, longest, NOTES)
    for i, roll in enumerate(rolls):
        n = len(roll) - 1
        assert torch.equal(x[i, :n], torch.from_numpy(roll[:-1]).float())  # inputs: frames 0..T-2
        assert torch.equal(y[i, :n], torch.from_numpy(roll[1:]).float())  # targets: frames 1..T-1
        assert y[i, n:].eq(PAD_TARGET).all() and x[i, n:].eq(0).all()
    assert 2 <= x[:, :5].sum(-1).min() and x.sum(-1).max() <= 8  # four voices sound at each beat

    (cache,) = tmp_path.glob("jsb_chorales-*.npz")
    files = [p for p in chorale_files() if any(p.name in v for v in dm.names.values())]
    assert cache == _cache_path(files, tmp_path)
    with np.load(cache) as z:
        edited = {k: z[k] for k in z.files}
    edited["spans"][:, 3] = 60  # every note becomes middle C
    with open(cache, "wb") as f:
        np.savez_compressed(f, **edited)
    again = JSBChoralesDataModule(limit_chorales=2, cache_dir=str(tmp_path))
    again.setup()
    x, _ = again.datasets["train"][0]
    assert x.sum(0).nonzero().flatten().tolist() == [60 - 21]

    cache.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable chorale cache"):
        rebuilt = JSBChoralesDataModule(limit_chorales=2, cache_dir=str(tmp_path))
        rebuilt.setup()
    assert torch.equal(rebuilt.datasets["train"][0][0], dm.datasets["train"][0][0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        JSBChoralesDataModule(limit_chorales=2, cache_dir=str(tmp_path)).setup()  # rewritten: read quietly
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


@pytest.mark.slow
def test_train_py_learns_a_few_chorales(tmp_path):
    """`python train.py data=jsb_chorales` end to end on 4 chorales per split: it logs the frame NLL per
    epoch and scores the test split better than the uninformed model (every key at p = 0.5: 88 ln 2)."""
    proc = run_script("train.py", "data=jsb_chorales", "data.limit_chorales=4", f"data.cache_dir={tmp_path / 'cache'}",
                      "trainer.max_epochs=5", "model.lr=0.03", *QUIET, "logger=csv", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    (run,) = run_dirs(tmp_path)
    res = results(run)
    assert res["status"] == "completed"
    metrics = res["metrics"]
    assert 0 < metrics["test/nll"] < 88 * math.log(2) and 0 < metrics["val/nll"] < 88 * math.log(2)
    # the loss is the per-key mean over the split's real frames, so 88 x loss is the frame NLL
    assert metrics["val/loss"] * 88 == pytest.approx(metrics["val/nll"], rel=1e-4)
    assert metrics["test/loss"] * 88 == pytest.approx(metrics["test/nll"], rel=1e-4)
    per_epoch = [float(r["val/nll"]) for r in csv_rows(run) if r.get("val/nll") and r.get("epoch")]
    assert len(per_epoch) >= 5 and per_epoch[-1] < per_epoch[0]
    assert list((tmp_path / "cache").glob("jsb_chorales-*.npz"))
