"""Real-world series that ship inside an installed package (statsmodels), for worked examples.

    python -m peephole_lstm.data.examples sunspots sunspots.csv   # writes YEAR,SUNACTIVITY
    python train.py data=csv data.path=sunspots.csv data.target=SUNACTIVITY data.window=20

``conf/data/sunspots.yaml`` reads the copy inside statsmodels directly via :func:`example_csv_path`.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

# name -> (statsmodels dataset module, CSV file inside it, target column, description)
EXAMPLES = {
    "sunspots": (
        "statsmodels.datasets.sunspots",
        "sunspots.csv",
        "SUNACTIVITY",
        "Yearly mean sunspot numbers 1700-2008 (309 rows; columns YEAR, SUNACTIVITY)",
    ),
}


def example_csv_path(name: str) -> str:
    """Path of the example's CSV inside the installed package (no copy, no network)."""
    if name not in EXAMPLES:
        raise ValueError(f"name={name!r} is not an example; choose one of {list(EXAMPLES)}")
    module, filename, _, _ = EXAMPLES[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the {name!r} example needs statsmodels: pip install statsmodels ({e})") from e
    path = Path(mod.__file__).parent / filename
    if not path.is_file():
        raise FileNotFoundError(f"{module} is installed but has no {filename} at {path}")
    return str(path)


def export(name: str, out: str | Path) -> Path:
    """Write the example as a plain UTF-8 CSV (what statsmodels' ``load_pandas()`` returns)."""
    example_csv_path(name)  # validates the name and the install
    data = importlib.import_module(EXAMPLES[name][0]).load_pandas().data
    out = Path(out)
    data.to_csv(out, index=False)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(EXAMPLES))
    parser.add_argument("out", help="CSV file to write")
    args = parser.parse_args(argv)
    out = export(args.name, args.out)
    target = EXAMPLES[args.name][2]
    print(f"wrote {out}; train with: python train.py data=csv data.path={out} data.target={target}")


if __name__ == "__main__":
    main()
