"""Print the per-class table of results/*.csv beside the published numbers (markdown, for the README).

    python results/table.py results/mnist-seed0-*.csv

Each CSV is a sweep's summary.csv (sweep.py writes one per sweep folder) copied here under a telling name.
The published AUROCs (%) are the Deep SVDD paper's Table 1 (Ruff et al., ICML 2018; mean over 10 seeds)
with their stds (the last row lists the classes whose mean is more than one paper std below the paper),
and the OC-NN paper's column (Chalapathy et al., arXiv:1802.06360; polluted training data, another
protocol). They are references to compare with, not results of this code; CIFAR-10 figures of this
project come from a JPEG-75 copy of the data, the papers' from the original.
"""
import csv
import os
import sys

OCNN_MNIST = [97.60, 99.53, 87.32, 86.52, 93.25, 86.48, 97.12, 93.64, 88.54, 93.54]
OCNN_CIFAR = [60.42, 61.97, 63.66, 53.57, 67.40, 56.11, 63.31, 60.09, 64.67, 60.32]
PAPER = {  # dataset -> method -> published AUROC % for classes 0..9
    "mnist": {
        "ae+own": [97.6, 98.3, 85.4, 86.7, 86.5, 78.2, 94.6, 92.3, 86.5, 90.4],          # DCAE
        "ae+soft-svdd": [97.8, 99.6, 89.5, 90.3, 93.8, 85.8, 98.0, 92.7, 92.9, 94.9],
        "ae+svdd": [98.0, 99.7, 91.7, 91.9, 94.9, 88.5, 98.3, 94.6, 93.9, 96.5],
        "ae+ocnn": OCNN_MNIST, "ae+ocnn-joint": OCNN_MNIST,
        "pixels+ocsvm": [98.6, 99.5, 82.5, 88.1, 94.9, 77.1, 96.5, 93.7, 88.9, 93.1],
        "pixels+kde": [97.1, 98.9, 79.0, 86.2, 87.9, 73.8, 87.6, 91.4, 79.2, 88.2],
        "pixels+iforest": [98.0, 97.3, 88.6, 89.9, 92.7, 85.5, 95.6, 92.0, 89.9, 93.5]},
    "cifar10": {
        "ae+own": [59.1, 57.4, 48.9, 58.4, 54.0, 62.2, 51.2, 58.6, 76.8, 67.3],
        "ae+soft-svdd": [61.7, 64.8, 49.5, 56.0, 59.1, 62.1, 67.8, 65.2, 75.6, 71.0],
        "ae+svdd": [61.7, 65.9, 50.8, 59.1, 60.9, 65.7, 67.7, 67.3, 75.9, 73.1],
        "ae+ocnn": OCNN_CIFAR, "ae+ocnn-joint": OCNN_CIFAR,
        "pixels+ocsvm": [61.6, 63.8, 50.0, 55.9, 66.0, 62.4, 74.7, 62.6, 74.9, 75.9],
        "pixels+kde": [61.2, 64.0, 50.1, 56.4, 66.2, 62.4, 74.9, 62.6, 75.1, 76.0],
        "pixels+iforest": [60.1, 50.8, 49.2, 55.1, 49.8, 58.5, 42.9, 55.1, 74.2, 58.9]},
}

PAPER_STD = {  # the same table's standard deviations over its 10 seeds (the OC-NN paper gives none)
    "mnist": {
        "ae+own": [0.7, 0.6, 2.4, 0.9, 2.0, 2.7, 0.5, 1.0, 1.6, 1.8],
        "ae+soft-svdd": [0.7, 0.1, 1.2, 2.1, 1.5, 2.5, 0.4, 1.4, 1.4, 0.6],
        "ae+svdd": [0.7, 0.1, 0.8, 1.5, 0.8, 0.9, 0.5, 0.9, 1.6, 0.3],
        "pixels+ocsvm": [0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        "pixels+kde": [0.0] * 10,
        "pixels+iforest": [0.3, 0.4, 0.5, 0.4, 0.6, 0.8, 0.3, 0.4, 0.4, 0.3]},
    "cifar10": {
        "ae+own": [5.1, 2.9, 2.4, 1.2, 1.3, 1.8, 5.2, 2.9, 1.4, 3.0],
        "ae+soft-svdd": [4.2, 1.4, 1.4, 1.1, 1.1, 2.4, 2.4, 1.0, 1.7, 1.1],
        "ae+svdd": [4.1, 2.1, 0.8, 1.4, 1.1, 2.5, 2.6, 0.9, 1.2, 1.2],
        "pixels+ocsvm": [0.9, 0.6, 0.5, 1.3, 0.7, 0.8, 0.3, 0.6, 0.4, 0.3],
        "pixels+kde": [0.0] * 10,
        "pixels+iforest": [0.7, 0.6, 0.4, 0.4, 0.4, 0.4, 0.6, 0.7, 0.6, 0.7]},
}


def main(paths):
    """One column per CSV, named by its method (or by its file, where two CSVs hold the same method)."""
    tables = [list(csv.DictReader(open(p))) for p in paths]
    names = [t[0]["method"] for t in tables]
    labels = [n if names.count(n) == 1 else os.path.basename(p)[:-4] for n, p in zip(names, paths)]
    rows = [dict(r, method=label) for t, label in zip(tables, labels) for r in t]
    method_of = dict(zip(labels, names))
    paper_of = {label: PAPER[rows[0]["dataset"]][m] for label, m in method_of.items() if m in PAPER[rows[0]["dataset"]]}
    methods = labels
    by = {(r["method"], int(r["normal_class"])): r for r in rows}
    classes = sorted({int(r["normal_class"]) for r in rows})
    print("| class | " + " | ".join(f"{m} (paper)" for m in methods) + " |")
    print("|---|" + "---|" * len(methods))
    for k in classes:
        cells = []
        for m in methods:
            r, paper = by.get((m, k)), paper_of.get(m, [None] * 10)[k]
            if r is None:
                mine = "-"
            elif int(r["n_seeds"]) == 1:                     # no spread to report from one seed
                mine = f"{float(r['auroc_mean']):.2f}"
            else:
                mine = f"{float(r['auroc_mean']):.2f} +- {float(r['auroc_std']):.2f}"
            cells.append(f"{mine} ({paper})" if paper is not None else mine)
        print(f"| {k} | " + " | ".join(cells) + " |")
    means = []
    for m in methods:
        vals = [float(by[(m, k)]["auroc_mean"]) for k in classes if (m, k) in by]
        paper = paper_of.get(m)
        ref = f" ({sum(paper[k] for k in classes) / len(classes):.2f})" if paper else ""
        means.append(f"{sum(vals) / len(vals):.2f}{ref}")
    print("| mean | " + " | ".join(means) + " |")
    # The per-class test: which classes lie more than one paper std below the paper's mean?
    std_of = {label: PAPER_STD[rows[0]["dataset"]][m] for label, m in method_of.items()
              if m in PAPER_STD[rows[0]["dataset"]]}
    below = []
    for m in methods:
        if m not in std_of:
            below.append("-")
            continue
        low = [k for k in classes if (m, k) in by
               and float(by[(m, k)]["auroc_mean"]) < paper_of[m][k] - std_of[m][k]]
        below.append(", ".join(map(str, low)) or "none")
    print("| classes > 1 paper std below | " + " | ".join(below) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
