"""data=digits: scikit-learn's bundled 8x8 digits as sequences of rows, split at random by class."""
import pytest
import torch

from peephole_lstm.data import DigitsDataModule, TaskSpec
from peephole_lstm.data.digits import load_digits


def test_images_are_sequences_of_rows_with_their_digit():
    dm = DigitsDataModule(batch_size=32)
    assert dm.spec == TaskSpec(task="classify", input_size=8, output_size=10,
                               target_names=[str(d) for d in range(10)])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 8, 8) and x.dtype == torch.float32  # (batch, 8 rows = steps, 8 pixels)
    assert y.shape == (32,) and y.dtype == torch.int64
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and 0.0 == images.min() and images.max() == 1.0
    # a training image is one of the dataset's images, rows in order, with its own label
    i = next(i for i in range(len(images)) if torch.equal(torch.from_numpy(images[i]), x[0]))
    assert labels[i] == y[0]


def test_splits_are_disjoint_stratified_and_the_same_for_every_seed():
    sizes, splits = {}, {}
    for seed in (0, 1):
        dm = DigitsDataModule(seed=seed)
        dm.setup()
        splits[seed] = {s: d.tensors for s, d in dm.datasets.items()}
        sizes[seed] = {s: len(d) for s, d in dm.datasets.items()}
    assert sizes[0] == {"train": 1259, "val": 269, "test": 269} and sum(sizes[0].values()) == 1797
    for split in ("train", "val", "test"):
        assert all(torch.equal(a, b) for a, b in zip(splits[0][split], splits[1][split]))
        counts = torch.bincount(splits[0][split][1], minlength=10)
        assert counts.min() > 0 and (counts.float() / counts.sum() - 0.1).abs().max() < 0.01  # every digit, ~1/10 each
    rows = {s: {tuple(img.flatten().tolist()) for img in splits[0][s][0]} for s in ("train", "val", "test")}
    assert not (rows["test"] & rows["train"]) and not (rows["val"] & rows["train"]) and not (rows["val"] & rows["test"])


@pytest.mark.parametrize("kwargs, message", [
    ({"val_fraction": 0.0}, "val_fraction=0.0 must be a number strictly between 0 and 1"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be < 1 so that a training split remains"),
    ({"batch_size": 0}, "batch_size=0 must be an integer >= 1"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs)
