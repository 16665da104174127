"""Ablations: what the representation and the objective each do to anomaly detection.

    python results/ablations/ablations.py commands pollution   # print the sweep.py commands of one question
    python results/ablations/ablations.py run pollution        # run them (resumable: finished runs are skipped)
    python results/ablations/ablations.py report               # CSVs + one figure per question, here

Questions (QUESTIONS below; every variant is one `sweep.py` sweep over classes 0, 2, 5 and seeds 0, 1, 2):
  pollution   AE vs RCAE pretraining under pollution 0, 0.01, 0.05, 0.1; DCAE score (reconstruction error)
  objective   DCAE vs one-class vs soft-boundary Deep SVDD vs OC-NN on the same pretrained autoencoder
  encoder-lr  OC-NN z-only (encoder frozen) vs joint with encoder lr 1e-6, 1e-5, 1e-4
  nu          nu = 0.01, 0.05, 0.1, 0.2 for soft-boundary Deep SVDD and OC-NN: AUROC, and the fraction of
              points beyond R (outside the sphere) / below r (under the hyperplane), training and test-normal

The runs go to runs/repro, the folder of the reproduction tables, so every question reuses the full-schedule
autoencoders of runs/repro/ae-cache (150 epochs), at the PyTorch port's settings (--settings port) with which
the ablations were measured; only the second stages and the `pollution` pretraining
use the reduced budgets written in the flags below (2 CPU cores). `--dataset cifar10` runs the same
questions on CIFAR-10 class 0 (airplane, the JPEG copy), one seed, at the budget in BASES["cifar10"].
"""
import csv
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import folders  # noqa: E402  (the repository's folders.py and sweep.py)
import sweep  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BASES = {
    "mnist": dict(classes=[0, 2, 5], seeds=[0, 1, 2], flags=["--settings", "port", "--out", "runs/repro"]),
    # CIFAR-10: the pretraining budget goes *after* each variant's flags, so it also caps the MNIST pollution
    # budget above (20 AE epochs): every variant pretrains 10 epochs (RCAE: 5 x 2), as the CIFAR-10 budget
    # table (same folder, same autoencoders). Deep SVDD runs 10 epochs, except where a variant sets its own
    # (nu: 30, so that soft-boundary training outlasts its 10 warm-up epochs with R = 0).
    "cifar10": dict(classes=[0], seeds=[0], flags=["--dataset", "cifar10", "--settings", "port",
                                                   "--out", "runs/repro-cifar10-budget",
                                                   "--svdd-epochs", "10"],
                    after=["--ae-epochs", "10", "--ae-milestones", "8", "--rcae-iters", "5"]),
}
NUS = [0.01, 0.05, 0.1, 0.2]
SOFT_NU = ["--objective", "soft-svdd", "--svdd-epochs", "30"]               # budget: 30 of 150 epochs
OCNN_SHORT = ["--ocnn-epochs", "50", "--ocnn-lr-drop", "20"]                 # budget: 50 of 250 epochs
AE_SHORT = ["--objective", "ae", "--ae-epochs", "20", "--ae-milestones", "15"]  # budget: 20 of 150 epochs
OCNN_JOINT = ["--objective", "ocnn", "--joint", "--encoder-lr", "1e-5"] + OCNN_SHORT  # the seed lab's encoder lr
# OC-NN as first measured: the paper's plain objective (raw codes, no clipping), the then default nu (MNIST
# 0.01, CIFAR-10 0.1: variant_argv fills it in) and encoder lr 1e-5; the variants without it run at run.py's
# OC-NN defaults (unit codes, clip 0.5, nu 0.1, encoder lr 1e-4)
PLAIN_OCNN = ["--no-ocnn-normalize", "--nu", "{plain_nu}", "--encoder-lr", "1e-5"]
PLAIN_NU = {"mnist": "0.01", "cifar10": "0.1"}


def with_plain_nu(flags, dataset):
    """The flags with PLAIN_OCNN's nu filled in for the dataset."""
    return [f.replace("{plain_nu}", PLAIN_NU[dataset]) for f in flags]

# OC-NN's settings (ocnn.py), MNIST only: on the default (Theano-settings) autoencoders of digits 0, 1, 2, the
# digits the seed lab reports; these questions have a base of their own (OWN_BASES) in place of BASES, and
# every variant names all four settings, so a change of run.py's defaults does not move it.
def ocnn_flags(unit, clip, nu, encoder_lr):
    return ["--objective", "ocnn", "--ocnn-normalize" if unit else "--no-ocnn-normalize", "--ocnn-clip", str(clip),
            "--nu", str(nu), "--encoder-lr", str(encoder_lr)]


OCNN_STEPS = [  # from the plain objective to run.py's defaults, one setting at a time, then each one left out
    ("plain (nu 0.01, encoder lr 1e-5)", ocnn_flags(False, 0, 0.01, 1e-5)),
    ("+ unit codes", ocnn_flags(True, 0, 0.01, 1e-5)),
    ("+ clip 0.5 (the seed lab's)", ocnn_flags(True, 0.5, 0.01, 1e-5)),
    ("+ nu 0.1", ocnn_flags(True, 0.5, 0.1, 1e-5)),
    ("+ encoder lr 1e-4 (defaults)", ocnn_flags(True, 0.5, 0.1, 1e-4)),
    ("defaults, raw codes", ocnn_flags(False, 0.5, 0.1, 1e-4)),
    ("defaults, no clipping", ocnn_flags(True, 0, 0.1, 1e-4)),
    ("defaults, nu 0.01", ocnn_flags(True, 0.5, 0.01, 1e-4))]
OCNN_Z_ONLY = [  # the encoder frozen: the encoder lr plays no part (the defaults' 1e-4 shares run.py's folder)
    ("plain (nu 0.01)", ocnn_flags(False, 0, 0.01, 1e-5)),
    ("unit codes, nu 0.01", ocnn_flags(True, 0.5, 0.01, 1e-5)),
    ("raw codes, nu 0.1", ocnn_flags(False, 0.5, 0.1, 1e-5)),
    ("unit codes, nu 0.1 (defaults)", ocnn_flags(True, 0.5, 0.1, 1e-4))]
# The seed lab's headline protocol: RCAE pretraining, OC-NN joint, 1% pollution, nu 0.01, with its code's unit
# codes and clipping 0.5, at the encoder lr of its README command (1e-5) and of its code (1e-4, also with its
# code's schedule, where the encoder lr does not drop); then run.py's OC-NN defaults (nu 0.1) on the same
# autoencoders; then both on the plain autoencoder, which is what its RCAE is (one outer iteration: N never
# feeds back into the training).
SEEDLAB = ["--pretrain", "rcae", "--pollution-rate", "0.01", "--joint"]
OWN_BASES = dict.fromkeys(["ocnn-options", "seedlab"], ["--settings", "paper", "--out", "runs/ocnn",
                                                        "--normal-class", "0,1,2", "--seeds", "0", "1", "2"])

# question -> (x-axis label, [(series, x, run.py flags)]); a variant's flags come after the base flags
QUESTIONS = {
    "ocnn-options": ("OC-NN settings", [("joint", name, ["--joint"] + flags) for name, flags in OCNN_STEPS] +
                     [("z-only", name, flags) for name, flags in OCNN_Z_ONLY]),
    "seedlab": ("the seed lab's protocol (RCAE, 1% pollution): OC-NN settings", [
        ("RCAE, joint, 1% pollution", "nu 0.01, encoder lr 1e-5 (its README)",
         SEEDLAB + ocnn_flags(True, 0.5, 0.01, 1e-5)),
        ("RCAE, joint, 1% pollution", "nu 0.01, encoder lr 1e-4 (its code)",
         SEEDLAB + ocnn_flags(True, 0.5, 0.01, 1e-4)),
        ("RCAE, joint, 1% pollution", "nu 0.01, encoder lr 1e-4 not dropping (its code's schedule)",
         SEEDLAB + ocnn_flags(True, 0.5, 0.01, 1e-4) + ["--no-encoder-lr-drop"]),
        ("RCAE, joint, 1% pollution", "run.py's defaults (nu 0.1, encoder lr 1e-4)",
         SEEDLAB + ocnn_flags(True, 0.5, 0.1, 1e-4)),
        ("RCAE, joint, 1% pollution", "nu 0.01, encoder lr 1e-4, no encoder weight decay (its code)",
         SEEDLAB + ocnn_flags(True, 0.5, 0.01, 1e-4) + ["--encoder-weight-decay", "0"]),
        ("RCAE, joint, 1% pollution", "nu 0.01, encoder lr 1e-4, per-image scaling (its preprocessing)",
         SEEDLAB + ocnn_flags(True, 0.5, 0.01, 1e-4) + ["--scaling", "image"]),
        ("RCAE, z-only, 1% pollution", "nu 0.01, the encoder frozen",
         SEEDLAB[:-1] + ocnn_flags(True, 0.5, 0.01, 1e-4)),
        ("AE, joint, 1% pollution", "nu 0.01, encoder lr 1e-4 (its code)", SEEDLAB[2:] + ocnn_flags(True, 0.5, 0.01, 1e-4)),
        ("AE, joint, 1% pollution", "run.py's defaults (nu 0.1, encoder lr 1e-4)",
         SEEDLAB[2:] + ocnn_flags(True, 0.5, 0.1, 1e-4))]),
    "pollution": ("pollution rate of the training set", [
        (name, p, AE_SHORT + ["--pollution-rate", str(p)] + extra)
        for name, extra in [("AE", []), ("RCAE (lambda 0.1)",
                                          ["--pretrain", "rcae", "--rcae-lambda", "0.1", "--rcae-iters", "4"])]
        for p in [0.0, 0.01, 0.05, 0.1]]),
    "objective": ("objective on the pretrained encoder", [
        ("same AE", "DCAE", ["--objective", "ae"]),
        ("same AE", "one-class SVDD", ["--objective", "svdd"]),
        ("same AE", "soft-boundary SVDD", ["--objective", "soft-svdd"]),
        ("same AE", "OC-NN z-only", ["--objective", "ocnn"] + PLAIN_OCNN),
        ("same AE", "OC-NN joint (50 ep)", OCNN_JOINT + PLAIN_OCNN),
        ("same AE", "OC-NN z-only, defaults", ["--objective", "ocnn"]),
        ("same AE", "OC-NN joint, defaults (50 ep)", ["--objective", "ocnn", "--joint"] + OCNN_SHORT)]),
    "encoder-lr": ("encoder learning rate (0 = z-only, encoder frozen)", [
        (name, lr, ["--objective", "ocnn"] + OCNN_SHORT + plain + (["--joint", "--encoder-lr", str(lr)] if lr else []))
        for name, plain in [("OC-NN plain, 50 epochs", PLAIN_OCNN), ("OC-NN defaults, 50 epochs", [])]
        for lr in [0, 1e-6, 1e-5, 1e-4]]),
    "nu": ("nu", [(name, nu, flags + ["--nu", str(nu)]) for nu in NUS for name, flags in
                  [("soft-boundary SVDD (30 ep)", SOFT_NU),
                   ("OC-NN z-only plain", ["--objective", "ocnn"] + PLAIN_OCNN),
                   ("OC-NN z-only, defaults", ["--objective", "ocnn"])]]),
}


def variant_argv(dataset, flags, question=None):
    """The sweep.py flags of one variant: the base (classes, seeds, output folder), the variant's own, then the
    dataset's overrides (argparse: the last value of a flag wins)."""
    flags = one_name(flags)
    if question in OWN_BASES:
        if dataset != "mnist":
            sys.exit(f"{question}: MNIST only")
        return OWN_BASES[question] + ["--quiet"] + flags
    b = BASES[dataset]
    flags = with_plain_nu(flags, dataset)
    return (b["flags"] + ["--normal-class", ",".join(map(str, b["classes"])), "--seeds"] +
            [str(s) for s in b["seeds"]] + ["--quiet"] + flags + b.get("after", []))


def one_name(flags):
    """The variants' flags as written when OC-NN joint was --objective ocnn --joint and the DCAE --objective ae:
    in today's names, --objective ocnn-joint and --objective own."""
    flags = list(flags)
    if "--joint" in flags:
        flags.remove("--joint")
        flags += ["--objective", "ocnn-joint"]                        # the last --objective wins
    return ["own" if f == "ae" and i and flags[i - 1] == "--objective" else f for i, f in enumerate(flags)]


def beyond_fractions(run_dir, cfg):
    """(training fraction beyond R / below r at the last epoch, the same fraction on the normal test images).

    Beyond = strictly outside the sphere (soft-boundary SVDD, score d^2 - R^2 > 0) or strictly below the
    hyperplane (OC-NN, score r - y_hat > 0); the nu-property bounds the training fraction by nu.
    """
    if cfg.objective not in ("soft-svdd", "ocnn", "ocnn-joint"):
        return None, None
    with open(os.path.join(run_dir, "history.json")) as f:
        last = json.load(f)[cfg.objective][-1]
    train = last["frac_out"] if cfg.objective == "soft-svdd" else last["frac_below"]
    rows = list(csv.DictReader(open(os.path.join(run_dir, "scores.csv"))))
    normal = np.array([float(r["score"]) for r in rows if r["label"] == "0"])
    return train, float((normal > 0).mean())


def collect(question, dataset):
    """One row per (variant, class, seed) that has finished; unfinished runs are listed on stderr."""
    _, variants = QUESTIONS[question]
    rows, missing = [], 0
    for series, x, flags in variants:
        cfg, classes, seeds, _ = sweep.parse(variant_argv(dataset, flags, question))
        data_id = folders.data_identity(cfg.dataset, cfg.data_root)
        for k in classes:
            for s in seeds:
                run_dir = os.path.join(ROOT, sweep.run_folder(cfg, data_id, k, s))
                path = os.path.join(run_dir, "metrics.json")
                if not os.path.exists(path):
                    missing += 1
                    continue
                m = json.load(open(path))
                train, test = beyond_fractions(run_dir, cfg)
                rows.append({"series": series, "x": x, "normal_class": k, "seed": s, "auroc": 100 * m["auroc"],
                             "frac_beyond_train": train, "frac_beyond_test_normal": test,
                             "N_l1_normal": m.get("N_l1_per_image_normal"),
                             "N_l1_polluted": m.get("N_l1_per_image_polluted"), "seconds": m["seconds"]})
    if missing:
        print(f"{question} ({dataset}): {missing} runs not finished yet", file=sys.stderr)
    return rows


def summarize(rows):
    """mean and std (population, over seeds) per (series, x, class) of every numeric column."""
    groups = {}
    for r in rows:
        groups.setdefault((r["series"], r["x"], r["normal_class"]), []).append(r)
    out = []
    for (series, x, k), rs in groups.items():
        row = {"series": series, "x": x, "normal_class": k, "n_seeds": len(rs),
               "seeds": " ".join(str(r["seed"]) for r in rs)}
        for col in ("auroc", "frac_beyond_train", "frac_beyond_test_normal", "N_l1_normal", "N_l1_polluted",
                    "seconds"):
            vals = [r[col] for r in rs if r[col] is not None]
            if vals:
                row[col + "_mean"], row[col + "_std"] = round(float(np.mean(vals)), 4), round(float(np.std(vals)), 4)
        out.append(row)
    return out


def plot(question, dataset, table, path):
    """One panel per normal class: AUROC against the varied setting, one line per series, std error bars,
    n = the number of seeds behind each point. For `nu`, a second row: the fraction of points beyond R /
    below r against nu, on the training set (bounded by nu, the dashed line) and on the normal test images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xlabel, variants = QUESTIONS[question]
    xs = list(dict.fromkeys(x for _, x, _ in variants))
    categorical = any(isinstance(x, str) for x in xs)
    classes = sorted({r["normal_class"] for r in table})
    rows = 2 if question == "nu" else 1
    long_labels = categorical and max(len(str(x)) for x in xs) > 20        # room for the labels below the axes
    fig, axes = plt.subplots(rows, len(classes), figsize=(4.2 * len(classes), 3.6 * rows + 2.5 * long_labels),
                             squeeze=False)
    for col, k in enumerate(classes):
        ax = axes[0][col]
        for series in dict.fromkeys(s for s, _, _ in variants):
            pts = sorted((r for r in table if r["series"] == series and r["normal_class"] == k),
                         key=lambda r: xs.index(r["x"]))
            pos = [xs.index(r["x"]) if categorical else r["x"] for r in pts]
            bars = ax.errorbar(pos, [r["auroc_mean"] for r in pts], yerr=[r["auroc_std"] for r in pts], marker="o",
                               capsize=3, label=series, linestyle="none" if categorical else "-")
            for p, r in zip(pos, pts):
                ax.annotate(f"n={r['n_seeds']}", (p, r["auroc_mean"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
            if rows == 2:
                for key, style in (("frac_beyond_train_mean", "-o"), ("frac_beyond_test_normal_mean", "--s")):
                    axes[1][col].plot(pos, [r[key] for r in pts], style, color=bars[0].get_color(), label=f"{series}, "
                                      f"{'training' if 'train' in key else 'normal test'}")
        ax.set_title(f"{dataset} normal class {k}")
        if not long_labels:                                               # else once below all panels
            ax.set_xlabel(xlabel)
        ax.set_ylabel("AUROC % (mean +- std over seeds)")
        if categorical:
            ax.set_xticks(range(len(xs)))
            ax.set_xticklabels(xs, rotation=75 if long_labels else 30, ha="right", fontsize=7 if long_labels else None)
        elif question == "encoder-lr":
            ax.set_xscale("symlog", linthresh=1e-6)
        ax.grid(alpha=0.3)
        if rows == 2:
            axes[1][col].plot(xs, xs, "k:", label="nu (the bound on training)")
            axes[1][col].set_xlabel("nu")
            axes[1][col].set_ylabel("fraction beyond R / below r")
            axes[1][col].grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if long_labels:
        fig.supxlabel(xlabel)
    if rows == 2:
        axes[1][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def kept_rows(question, path, table):
    """The rows of the CSV already at `path` whose variant is still in QUESTIONS but has no finished run on
    this machine (run folders are scratch, the CSV is the record): a report after a partial rerun, or on a
    fresh clone, keeps what was measured before instead of dropping it."""
    if not os.path.exists(path):
        return []
    xs = {str(x): x for _, x, _ in QUESTIONS[question][1]}
    series = {s for s, _, _ in QUESTIONS[question][1]}
    have = {(r["series"], str(r["x"]), r["normal_class"]) for r in table}
    kept = []
    for r in csv.DictReader(open(path)):
        key = (r["series"], r["x"], int(r["normal_class"]))
        if r["series"] not in series or r["x"] not in xs or key in have:
            continue
        row = {"series": r["series"], "x": xs[r["x"]], "normal_class": key[2], "n_seeds": int(r["n_seeds"]),
               "seeds": r["seeds"]}
        row.update({c: float(v) for c, v in r.items() if c not in row and v != ""})
        kept.append(row)
    return kept


def report(dataset):
    """results/ablations/<dataset>-<question>.csv and .png for every question with finished runs (rows of
    variants not rerun here are kept from the CSV, see kept_rows)."""
    for question in QUESTIONS:
        if question in OWN_BASES and dataset != "mnist":
            continue
        stem = os.path.join(HERE, f"{dataset}-{question}")
        table = summarize(collect(question, dataset))
        table += kept_rows(question, stem + ".csv", table)
        order = [(s, str(x)) for s, x, _ in QUESTIONS[question][1]]
        table.sort(key=lambda r: (order.index((r["series"], str(r["x"]))), r["normal_class"]))
        if not table:
            continue
        cols = list(dict.fromkeys(c for r in table for c in r))
        with open(stem + ".csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(table)
        plot(question, dataset, table, stem + ".png")
        print(f"wrote {stem}.csv and .png ({len(table)} rows)")


def main(argv):
    dataset = "cifar10" if "--dataset" in argv and argv[argv.index("--dataset") + 1] == "cifar10" else "mnist"
    argv = [a for a in argv if a not in ("--dataset", "cifar10", "mnist")]
    if not argv or argv[0] not in ("commands", "run", "report") or (argv[0] != "report" and
                                                                     (len(argv) < 2 or argv[1] not in QUESTIONS)):
        sys.exit(f"usage: ablations.py commands|run {{{','.join(QUESTIONS)}}} | report  [--dataset cifar10]")
    if argv[0] == "report":
        return report(dataset)
    os.chdir(ROOT)
    for _, _, flags in QUESTIONS[argv[1]][1]:
        args = variant_argv(dataset, flags, argv[1])
        if argv[0] == "commands":
            print("python sweep.py " + " ".join(args))
        else:
            sweep.main(args)


if __name__ == "__main__":
    main(sys.argv[1:])
