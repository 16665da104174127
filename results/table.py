"""Print the per-class table of results/*.csv beside the published numbers (markdown, for the README).

    python results/table.py results/mnist-seed0-*.csv

Each CSV is a sweep's summary.csv (run.py writes one per sweep folder) copied here under a telling name.
The published AUROCs (%) are the Deep SVDD paper's Table 1 (Ruff et al., ICML 2018; mean over 10 seeds)
and the OC-NN paper's column (Chalapathy et al., arXiv:1802.06360; polluted training data, another
protocol); they are references to compare with, not results of this code.
"""
import csv
import sys

PAPER = {  # method -> published AUROC % for MNIST classes 0..9
    "ae+ae": [97.6, 98.3, 85.4, 86.7, 86.5, 78.2, 94.6, 92.3, 86.5, 90.4],          # DCAE
    "ae+soft-svdd": [97.8, 99.6, 89.5, 90.3, 93.8, 85.8, 98.0, 92.7, 92.9, 94.9],
    "ae+svdd": [98.0, 99.7, 91.7, 91.9, 94.9, 88.5, 98.3, 94.6, 93.9, 96.5],
    "ae+ocnn": [97.60, 99.53, 87.32, 86.52, 93.25, 86.48, 97.12, 93.64, 88.54, 93.54],
    "ae+ocnn-joint": [97.60, 99.53, 87.32, 86.52, 93.25, 86.48, 97.12, 93.64, 88.54, 93.54],
}


def main(paths):
    rows = [r for p in paths for r in csv.DictReader(open(p))]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], int(r["normal_class"])): r for r in rows}
    classes = sorted({int(r["normal_class"]) for r in rows})
    print("| class | " + " | ".join(f"{m} (paper)" for m in methods) + " |")
    print("|---|" + "---|" * len(methods))
    for k in classes:
        cells = []
        for m in methods:
            r, paper = by.get((m, k)), PAPER.get(m, [None] * 10)[k]
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
        paper = PAPER.get(m)
        ref = f" ({sum(paper[k] for k in classes) / len(classes):.2f})" if paper else ""
        means.append(f"{sum(vals) / len(vals):.2f}{ref}")
    print("| mean | " + " | ".join(means) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
