"""Parameter counts of the six backbones next to the upstream DCLS-Audio ones.

    python benchmarks/param_counts.py                      # table on stdout
    python benchmarks/param_counts.py --out params.json    # and JSON

"ours" counts each shared DCLS position tensor once (``model.parameters()``); "upstream" is
the same count for the upstream model, taken from ``../shared/upstream/<model>.json`` when
that folder exists, else from the table in ``dcls_audio.models.param_count``. The paper's
README lists the counts with a 1000-class head ("ours@1000 cls" reproduces them).
Device-independent: runs on CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dcls_audio.models import format_parameter_table, list_models, parameter_table  # noqa: E402


def manifest_counts(upstream_dir: Path) -> dict[str, int]:
    """num_parameters of each ``<model>.json`` manifest found in ``upstream_dir``."""
    counts = {}
    for name in list_models():
        path = upstream_dir / f"{name}.json"
        if path.is_file():
            counts[name] = json.loads(path.read_text())["num_parameters"]
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--upstream-dir",
        type=Path,
        default=ROOT.parent / "shared" / "upstream",
        help="folder with the upstream <model>.json manifests",
    )
    args = parser.parse_args(argv)

    rows = parameter_table()
    manifests = manifest_counts(args.upstream_dir)
    for row in rows:
        if row["model"] in manifests:
            row["upstream"] = manifests[row["model"]]
            row["match"] = row["parameters"] == row["upstream"]
        row["upstream_source"] = "manifest" if row["model"] in manifests else "table"
    print(format_parameter_table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if all(r["match"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
