"""Table and figures of the ISCS evidence experiment (``experiments/iscs_eval.py``), on CPU.

Reads the results file (JSONL) and, where present, the volumes the experiment saved, and writes:

- ``iscs_table.md`` (also printed) / ``iscs_table.csv``: one block of rows per problem and prior
  (the checkpoint that made the sampler runs), with the classical baselines on that block's volumes
  first; per method, mean +- standard deviation over every (volume, sampler seed) run of axial /
  coronal / sagittal PSNR and SSIM, the inter-slice gap along z (``abs_delta``) and along the
  prior's slice axis, and seconds per run; on ISCS rows the ISCS minus i.i.d. PSNR deltas, the
  ``abs_delta`` ratio and the number of (volume, seed) pairs behind them; the paper's numbers where
  the paper has them; the target check (ISCS against i.i.d. noise); the correlation-knob table.
- ``iscs_slices.png``: coronal and sagittal mid-slices of GT, i.i.d. and ISCS reconstructions, with
  their error rows (needs the saved volumes).
- ``iscs_knob.png``: PSNR and ``abs_delta`` from i.i.d. through AR(1) and ISCS to shared noise.

Standard deviations are sample standard deviations (n - 1); a single run shows no spread.

Usage: ``python figures/make_iscs_figures.py --results FILE [--volumes DIR] [--out DIR]``
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from algorithms import iscs_angles  # noqa: E402
from experiments.iscs_eval import (  # noqa: E402
    DEFAULT_RESULTS,
    KNOB_NOISES,
    PROBLEMS,
    SAMPLER_METHODS,
    label,
    make_noise_source,
    prior_tag,
    read_records,
)

PLANES = ("axial", "coronal", "sagittal")
# Table columns: (heading, metric key, digits).
COLUMNS = (
    [(f"PSNR {plane[:3]}", f"psnr_{plane}", 2) for plane in PLANES]
    + [(f"SSIM {plane[:3]}", f"ssim_{plane}", 3) for plane in PLANES]
    + [("abs_delta z", "abs_delta", 4), ("abs_delta slices", "abs_delta_slices", 4), ("s/run", "seconds", 1)]
)
# Row order within a problem; the classical baseline comes first.
METHOD_ORDER = ("FDK", "A_dagger", "ADMM-TV", "DDS", "DDS+TV", "DDS+ISCS", "DDS+shared", "DDNM", "DDNM+ISCS")
# Third-party notes of the paper's Table 1: (problem, method) -> (PSNR axial, coronal, sagittal, abs_delta).
PAPER: Dict[Tuple[str, str], Tuple[Optional[float], ...]] = {
    ("SVCT-30", "DDS"): (34.76, 35.12, 35.33, 0.0056),
    ("SVCT-30", "DDS+TV"): (36.26, 37.08, 37.50, None),
    ("SVCT-30", "DDS+ISCS"): (36.97, 37.75, 38.16, 0.0018),
    ("LACT-100", "DDS"): (None, None, None, 0.0116),
    ("LACT-100", "DDS+TV"): (31.40, 33.33, 32.83, None),
    ("LACT-100", "DDS+ISCS"): (31.65, 32.90, 32.49, 0.0020),
    ("LACT-100", "DDNM"): (28.40, 28.75, 28.22, None),
    ("LACT-100", "DDNM+ISCS"): (30.89, 31.88, 31.59, None),
    ("ZSR-5", "DDS"): (39.32, None, None, 0.0016),
    ("ZSR-5", "DDS+ISCS"): (40.33, None, None, 0.0011),
}
# The target: (problem, method) pairs, and the thresholds on ISCS minus i.i.d.
TARGET_PAIRS = (("SVCT-30", "DDS"), ("LACT-100", "DDNM"))
PAIR_METHODS = ("DDS", "DDNM")
# The prior column of records made before records named their prior.
UNTAGGED = "untagged"
# The prior column of a block of classical baselines whose volumes no sampler run shares.
NO_PRIOR = "-"
TARGET_GAIN_DB, TARGET_GAP_RATIO, TARGET_AXIAL_LOSS_DB = 1.5, 0.5, 0.1
KNOB_PROBLEM, KNOB_METHOD = "SVCT-30", "DDS"
# Display window of the CT slices: -200 .. 300 HU in the [-1000, 1600] HU -> [0, 1] map.
CT_WINDOW = ((-200 + 1000) / 2600, (300 + 1000) / 2600)
ERROR_MAX = 0.05


def _value(record: Mapping, key: str) -> Optional[float]:
    return record["seconds"] if key == "seconds" else record["metrics"].get(key)


def mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    """Mean, sample standard deviation (None for one value) and count of the defined values."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return None, None, 0
    return statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else None, len(kept)


def _cell(values: Sequence[Optional[float]], digits: int) -> str:
    mean, std, _ = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def prior_of(record: Mapping) -> str:
    """The prior column of a record: the checkpoint's file stem and hash that made it (``UNTAGGED`` for
    records made before records named their checkpoint)."""
    if not record.get("checkpoint_sha256"):
        return UNTAGGED
    return prior_tag(Path(record["checkpoint"]), record["checkpoint_sha256"])


def group_records(records: Sequence[Mapping]) -> Dict[Tuple[str, str, str], List[Mapping]]:
    """Records by (problem, prior, label); a key seen twice keeps its last record.

    A classical baseline (no prior) joins every prior block of its problem whose sampler runs share
    its volume, so that each block compares methods on the same volumes; with none, it forms the
    block ``NO_PRIOR``.
    """
    latest = list({record["key"]: record for record in records}.values())
    sampled = [record for record in latest if record["method"] in SAMPLER_METHODS]
    volumes: Dict[Tuple[str, str], set] = defaultdict(set)
    for record in sampled:
        volumes[(record["problem"], prior_of(record))].add(record["volume"])
    groups: Dict[Tuple[str, str, str], List[Mapping]] = defaultdict(list)
    for record in latest:
        name = label(record["method"], record["noise"])
        if record["method"] in SAMPLER_METHODS:
            priors = [prior_of(record)]
        else:
            priors = [
                prior
                for (problem, prior), seen in sorted(volumes.items())
                if problem == record["problem"] and record["volume"] in seen
            ] or [NO_PRIOR]
        for prior in priors:
            groups[(record["problem"], prior, name)].append(record)
    return groups


def blocks(groups: Mapping[Tuple[str, str, str], List[Mapping]]) -> List[Tuple[str, str]]:
    """The (problem, prior) blocks of the groups, in ``PROBLEMS`` order, by prior within a problem and
    the block of classical runs without a prior last."""
    present = {(problem, prior) for problem, prior, _ in groups}
    order = {problem: index for index, problem in enumerate(PROBLEMS)}
    return sorted(
        present, key=lambda block: (order.get(block[0], len(order)), block[0], block[1] == NO_PRIOR, block[1])
    )


def _main_rows(groups: Mapping[Tuple[str, str, str], List[Mapping]]) -> List[Tuple[str, str, str]]:
    return [(p, prior, m) for p, prior in blocks(groups) for m in METHOD_ORDER if (p, prior, m) in groups]


def _paper_cells(problem: str, method: str) -> Tuple[str, str]:
    paper = PAPER.get((problem, method))
    if paper is None:
        return "", ""
    psnr = "/".join("-" if v is None else f"{v:.2f}" for v in paper[:3])
    return ("" if psnr == "-/-/-" else psnr), ("" if paper[3] is None else f"{paper[3]:.4f}")


def _per_volume_means(records: Sequence[Mapping], key: str) -> Dict[int, float]:
    by_volume: Dict[int, List[float]] = defaultdict(list)
    for record in records:
        value = _value(record, key)
        if value is not None:
            by_volume[record["volume"]].append(value)
    return {volume: statistics.fmean(values) for volume, values in by_volume.items()}


def compare_pair(groups: Mapping, problem: str, prior: str, method: str) -> Optional[Dict[str, object]]:
    """ISCS minus i.i.d. for one (problem, prior, method): mean differences, per-volume ranges, gap
    ratio, and the number of (volume, seed) pairs run both ways.

    Returns None when either side has no runs.
    """
    iid, iscs = groups.get((problem, prior, method)), groups.get((problem, prior, f"{method}+ISCS"))
    if not iid or not iscs:
        return None
    runs = [{(r["volume"], r["seed"]) for r in side} for side in (iid, iscs)]
    out: Dict[str, object] = {"n_iid": len(iid), "n_iscs": len(iscs), "n_pairs": len(runs[0] & runs[1])}
    for plane in PLANES:
        key = f"psnr_{plane}"
        a, b = _per_volume_means(iid, key), _per_volume_means(iscs, key)
        shared = sorted(set(a) & set(b))
        deltas = [b[v] - a[v] for v in shared]
        out[f"delta_{plane}"] = (
            mean_std([_value(r, key) for r in iscs])[0] - mean_std([_value(r, key) for r in iid])[0]
        )
        out[f"range_{plane}"] = (min(deltas), max(deltas)) if deltas else None
    gap_iid, gap_iscs = (
        mean_std([_value(r, "abs_delta") for r in iid])[0],
        mean_std([_value(r, "abs_delta") for r in iscs])[0],
    )
    out["gap_iid"], out["gap_iscs"], out["gap_ratio"] = gap_iid, gap_iscs, gap_iscs / gap_iid
    return out


def _target_lines(comparison: Mapping[str, object]) -> List[str]:
    checks = []
    for plane in ("coronal", "sagittal"):
        delta = comparison[f"delta_{plane}"]
        verdict = "met" if delta >= TARGET_GAIN_DB else f"missed by {TARGET_GAIN_DB - delta:.2f} dB"
        checks.append(f"{plane} +{TARGET_GAIN_DB} dB: {delta:+.2f} dB, {verdict}")
    ratio = comparison["gap_ratio"]
    checks.append(
        f"abs_delta at most halved: ratio {ratio:.2f}, {'met' if ratio <= TARGET_GAP_RATIO else 'missed'}"
    )
    axial = comparison["delta_axial"]
    ok = axial >= -TARGET_AXIAL_LOSS_DB
    checks.append(
        f"axial not worse than -{TARGET_AXIAL_LOSS_DB} dB: {axial:+.2f} dB, {'met' if ok else 'missed'}"
    )
    return checks


def _range_text(comparison: Mapping[str, object], plane: str) -> str:
    span = comparison[f"range_{plane}"]
    return "" if span is None else f" (per volume {span[0]:+.2f} .. {span[1]:+.2f})"


def neighbour_correlation(noise: str, num_slices: int) -> float:
    """Correlation between the noise of neighbouring slices for a noise spec of the experiment."""
    source = make_noise_source(noise)
    correlations = {
        "IidNoise": lambda: 0.0,
        "SharedNoise": lambda: 1.0,
        "Ar1Noise": lambda: source.rho,
        "IscsNoise": lambda: (
            math.cos(float(iscs_angles(num_slices, source.span).diff()[0])) if num_slices > 1 else 1.0
        ),
    }
    return correlations[type(source).__name__]()


def knob_rows(records: Sequence[Mapping]) -> List[Dict[str, object]]:
    """Per knob setting present (in ``KNOB_NOISES`` order): its records on the knob phantom."""
    knob = [
        r
        for r in {r["key"]: r for r in records}.values()
        if r["problem"] == KNOB_PROBLEM and r["method"] == KNOB_METHOD
    ]
    if not knob:
        return []
    # The knob curve runs on one phantom with one prior: those of the first ar1 record, else of the first one.
    first = next((r for r in knob if r["noise"].startswith("ar1")), knob[0])
    volume, prior = first["volume"], prior_of(first)
    rows = []
    for noise in KNOB_NOISES:
        runs = [r for r in knob if r["volume"] == volume and prior_of(r) == prior and r["noise"] == noise]
        if runs:
            slices = runs[0]["settings"]["depth"]
            rows.append(
                {
                    "noise": noise,
                    "rho": neighbour_correlation(noise, slices),
                    "runs": runs,
                    "volume": volume,
                    "prior": prior,
                }
            )
    return rows


def _pair_cells(comparison: Optional[Mapping[str, object]]) -> List[str]:
    if comparison is None:
        return ["", "", ""]
    deltas = "/".join(f"{comparison[f'delta_{plane}']:+.2f}" for plane in PLANES)
    return [deltas, f"{comparison['gap_ratio']:.2f}", str(comparison["n_pairs"])]


def _iscs_comparison(groups: Mapping, problem: str, prior: str, method: str) -> Optional[Dict[str, object]]:
    """The ISCS minus i.i.d. comparison of an ISCS row (None for other rows)."""
    if not method.endswith("+ISCS"):
        return None
    return compare_pair(groups, problem, prior, method[: -len("+ISCS")])


def table_text(records: Sequence[Mapping]) -> str:
    """The markdown of the table, the target check and the knob table."""
    groups = group_records(records)
    header = ["problem", "prior", "method", "n"] + [c[0] for c in COLUMNS]
    header += ["ISCS−iid PSNR a/c/s", "abs_delta ratio", "n pairs", "paper PSNR a/c/s", "paper abs_delta"]
    lines = ["# ISCS evidence: results", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for problem, prior, method in _main_rows(groups):
        runs = groups[(problem, prior, method)]
        cells = [_cell([_value(r, key) for r in runs], digits) for _, key, digits in COLUMNS]
        cells += _pair_cells(_iscs_comparison(groups, problem, prior, method))
        row = [problem, prior, method, str(len(runs)), *cells, *_paper_cells(problem, method)]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "One block per problem and prior (the checkpoint tag: file stem and sha256 prefix); the "
        "classical rows of a block are on its sampler runs' volumes. Mean ± sample standard deviation "
        "over every (volume, sampler seed) run. abs_delta z: mean |D_z(recon - GT)| along z; abs_delta "
        "slices: the same along the axis the prior's slices are stacked on (z for CT, y for ZSR). "
        "ISCS−iid: difference of mean PSNR; abs_delta ratio: ISCS over i.i.d.; n pairs: (volume, seed) "
        "run both ways.",
        "",
        "## Target: ISCS minus i.i.d. noise",
        "",
    ]
    for problem, prior in blocks(groups):
        for method in PAIR_METHODS:
            comparison = compare_pair(groups, problem, prior, method)
            if comparison is None:
                continue
            target = (problem, method) in TARGET_PAIRS
            deltas = ", ".join(
                f"{plane} {comparison[f'delta_{plane}']:+.2f} dB{_range_text(comparison, plane)}"
                for plane in PLANES
            )
            gap_iid, gap_iscs, ratio = comparison["gap_iid"], comparison["gap_iscs"], comparison["gap_ratio"]
            gaps = f"{gap_iid:.4f} -> {gap_iscs:.4f} (ratio {ratio:.2f})"
            runs = f"runs {comparison['n_iid']} / {comparison['n_iscs']}, pairs {comparison['n_pairs']}"
            lines.append(
                f"- {problem} {method}, prior {prior}{' (target)' if target else ''}: {deltas}; "
                f"abs_delta {gaps}; {runs}"
            )
            if target:
                lines += [f"  - {check}" for check in _target_lines(comparison)]
    knob = knob_rows(records)
    if knob:
        lines += [
            "",
            f"## Correlation knob: {KNOB_METHOD} {KNOB_PROBLEM}, phantom {knob[0]['volume']}, "
            f"prior {knob[0]['prior']}",
            "",
            "| noise | neighbour correlation | n | PSNR cor | PSNR sag | PSNR axi | abs_delta z |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in knob:
            runs = row["runs"]
            cells = [
                _cell([_value(r, f"psnr_{p}") for r in runs], 2) for p in ("coronal", "sagittal", "axial")
            ]
            cells.append(_cell([_value(r, "abs_delta") for r in runs], 4))
            lines.append(f"| {row['noise']} | {row['rho']:.5f} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(records: Sequence[Mapping], md_path: Path, csv_path: Path) -> str:
    """Write the markdown table (with target check and knob table) and the CSV of every group.

    Returns:
        The markdown.
    """
    text = table_text(records)
    md_path.write_text(text)
    groups = group_records(records)
    rows = _main_rows(groups)
    keys = [key for _, key, _ in COLUMNS]
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["problem", "prior", "method", "n"]
            + [f"{k}_{s}" for k in keys for s in ("mean", "std")]
            + [f"iscs_minus_iid_psnr_{plane}" for plane in PLANES]
            + ["abs_delta_ratio", "n_pairs"]
            + ["paper_psnr_axial", "paper_psnr_coronal", "paper_psnr_sagittal", "paper_abs_delta"]
        )
        ordered = rows + sorted(set(groups) - set(rows))
        for problem, prior, method in ordered:
            runs = groups[(problem, prior, method)]
            stats = [mean_std([_value(r, key) for r in runs])[:2] for key in keys]
            comparison = _iscs_comparison(groups, problem, prior, method)
            pair = (
                [comparison[f"delta_{plane}"] for plane in PLANES]
                + [comparison["gap_ratio"], comparison["n_pairs"]]
                if comparison
                else [None] * 5
            )
            paper = PAPER.get((problem, method), (None,) * 4)
            writer.writerow(
                [problem, prior, method, len(runs)]
                + ["" if v is None else f"{v:.8g}" for stat in stats for v in stat]
                + ["" if v is None else f"{v:.8g}" for v in pair]
                + ["" if v is None else v for v in paper]
            )
    return text


def knob_figure(records: Sequence[Mapping], path: Path) -> bool:
    """PSNR (coronal, sagittal) and abs_delta against the knob setting; False when there are no knob runs."""
    rows = knob_rows(records)
    if not rows:
        return False
    from matplotlib.figure import Figure

    positions = range(len(rows))
    ticks = [f"{row['noise']}\nρ={row['rho']:.4g}" for row in rows]
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for plane, style in (("coronal", "o-"), ("sagittal", "s--")):
        stats = [mean_std([_value(r, f"psnr_{plane}") for r in row["runs"]]) for row in rows]
        left.errorbar(
            positions,
            [s[0] for s in stats],
            yerr=[s[1] or 0.0 for s in stats],
            fmt=style,
            capsize=3,
            label=plane,
        )
    stats = [mean_std([_value(r, "abs_delta") for r in row["runs"]]) for row in rows]
    right.errorbar(
        positions, [s[0] for s in stats], yerr=[s[1] or 0.0 for s in stats], fmt="o-", capsize=3, color="C3"
    )
    left.set_ylabel("PSNR (dB)")
    left.legend()
    right.set_ylabel("abs_delta (mean |D_z(recon - GT)|)")
    for ax in (left, right):
        ax.set_xticks(list(positions), ticks, fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{KNOB_METHOD} {KNOB_PROBLEM}, phantom {rows[0]['volume']}: inter-slice noise correlation "
        "from i.i.d. to shared (mean ± std over sampler seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def load_volumes(folder: Path) -> Dict[str, object]:
    """Key -> float32 numpy volume [D, H, W] of every ``.pt`` the experiment saved in ``folder``."""
    import torch

    volumes = {}
    for path in sorted(folder.glob("*.pt")):
        item = torch.load(path, map_location="cpu", weights_only=True)
        volumes[item["key"]] = item["volume"].float().numpy()
    return volumes


def slice_panels(volumes: Mapping[str, object]) -> List[Tuple[str, object, List[Tuple[str, str, object]]]]:
    """``(problem, GT, [(label, key, recon), ...])`` per problem and method with i.i.d. and ISCS recons.

    Ground truths are saved as ``<volume>/GT``, reconstructions under their case keys
    ``<problem>/<volume>/<method>/<noise>/seed<k>``.
    """
    panels = []
    for gt_key, gt in volumes.items():
        if not gt_key.endswith("/GT"):
            continue
        volume_name = gt_key.split("/")[0]
        for problem in PROBLEMS:
            for method in METHOD_ORDER:
                recons = []
                for noise in ("iid", "iscs"):
                    prefix = f"{problem}/{volume_name}/{method}/{noise}/"
                    key = next((k for k in sorted(volumes) if k.startswith(prefix)), None)
                    if key is not None:
                        recons.append((label(method, noise), key, volumes[key]))
                if len(recons) == 2:
                    panels.append((problem, gt, recons))
    return panels


def slices_figure(folder: Path, records: Sequence[Mapping], path: Path) -> bool:
    """Coronal and sagittal mid-slices of GT, i.i.d. and ISCS with error rows; False without volumes."""
    if not folder.is_dir():
        return False
    panels = slice_panels(load_volumes(folder))
    if not panels:
        return False
    from matplotlib.figure import Figure

    metrics = {record["key"]: record["metrics"] for record in records}
    planes = (
        ("coronal", lambda v: v[:, v.shape[1] // 2, :]),
        ("sagittal", lambda v: v[:, :, v.shape[2] // 2]),
    )
    # Rows are as tall as the slices are (3 inches per column width, plus room for the titles).
    depth, _, width = panels[0][1].shape
    fig = Figure(figsize=(9.5, 4 * len(panels) * (3 * depth / width + 0.5)), layout="constrained")
    axes = fig.subplots(4 * len(panels), 3, squeeze=False)
    for block, (problem, gt, recons) in enumerate(panels):
        for p, (plane, take) in enumerate(planes):
            image_row, error_row = axes[4 * block + 2 * p], axes[4 * block + 2 * p + 1]
            image_row[0].imshow(take(gt), cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1])
            image_row[0].set_title(f"{problem} GT", fontsize=8)
            image_row[0].set_ylabel(plane)
            error_row[0].axis("off")
            for c, (name, key, volume) in enumerate(recons, start=1):
                value = metrics.get(key, {}).get(f"psnr_{plane}")
                caption = "" if value is None else f"\n{plane} PSNR {value:.2f} dB"
                image_row[c].imshow(take(volume), cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1])
                image_row[c].set_title(f"{name}{caption}", fontsize=8)
                shown = error_row[c].imshow(
                    abs(take(volume) - take(gt)), cmap="magma", vmin=0.0, vmax=ERROR_MAX
                )
                error_row[c].set_title(f"|{name} - GT| ({plane})", fontsize=8)
            fig.colorbar(shown, ax=error_row.tolist(), fraction=0.03)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the table and the figures as the command line says; returns the exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help="JSONL of experiments/iscs_eval.py"
    )
    parser.add_argument(
        "--volumes",
        type=Path,
        default=ROOT / "experiments" / "results" / "volumes",
        help="folder of the volumes the experiment saved (.pt)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "figures", help="output folder")
    args = parser.parse_args(argv)
    records = read_records(args.results)
    if not records:
        raise ValueError(f"{args.results} holds no results; run experiments/iscs_eval.py first")
    args.out.mkdir(parents=True, exist_ok=True)
    print(write_table(records, args.out / "iscs_table.md", args.out / "iscs_table.csv"), end="")
    written = ["iscs_table.md", "iscs_table.csv"]
    if knob_figure(records, args.out / "iscs_knob.png"):
        written.append("iscs_knob.png")
    if slices_figure(args.volumes, records, args.out / "iscs_slices.png"):
        written.append("iscs_slices.png")
    print(f"wrote {', '.join(written)} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
