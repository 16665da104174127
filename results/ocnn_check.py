"""Why OC-NN trails Deep SVDD here, and what unit codes change: the same codes, scored by a hyperplane and a sphere.

    python results/ocnn_check.py            # the `ocnn-options` runs: digits 0 1 2, seeds 0 1 2, runs/ocnn
    python results/ocnn_check.py repro      # the port's runs of results/README.md section 2, in runs/repro
    python results/ocnn_check.py runs/<time>-mnist-0-ae+ocnn ...      # or any OC-NN run folders

For every finished OC-NN run it loads the saved encoder and head and prints the test AUROC (%) of three
scores computed on the very same codes, those the head sees (z = phi(x), or z / ||z|| with unit codes):

  hyperplane   r - y_hat(x), the OC-NN score run.py reported (linear g: y_hat = <u, z>, u = V^T w)
  mean-proj    -<m, z>, m = the mean training code: the direction a linear head drifts to (ocnn.py docstring)
  sphere       ||z - m||^2: a hypersphere distance on the same encoder - what the OC-NN authors' public
               code scored, and Deep SVDD's score before any Deep SVDD training
and cos(u, m), how close the learnt direction is to the mean code, and the norm of u (linear g only:
'-' otherwise); then the mean length ||phi(x)|| of the raw codes of the normal and of the anomalous test
images ("code norm") and the final offset r; for a polluted training set, the regime also says how many
of the anomalies mixed into it and how many normal images lie below r (the points the hinge's gradient
comes from). The plain objective regularises the head (||w||, ||V||) but not the encoder (only weight
decay), so joint training can raise y_hat and r by growing the codes instead of u: the norms show whether
it did, and whether the anomalies' codes grew with the normal ones. With unit codes the head cannot see
the length, r stays below ||u||, and the ranking is by angle alone.

"""
import dataclasses
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "results", "ablations"))
import ablations  # noqa: E402  (the joint runs are the ablation's)
import ae  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import ocnn  # noqa: E402
import folders as folders_  # noqa: E402  (`folders` below: a list of run folders)
import settings  # noqa: E402
import sweep  # noqa: E402

PLAIN = ablations.with_plain_nu(ablations.PLAIN_OCNN, "mnist")              # what those runs were measured with
REGIMES = [["--objective", "ocnn"] + PLAIN,                                  # z-only
           ["--objective", "ocnn-joint"] + PLAIN,                       # joint, 250 epochs
           ablations.OCNN_JOINT + PLAIN]                                     # joint, 50 epochs


@torch.no_grad()
def check(run_dir, cfg):
    """The figures of one finished run, or None if it has not finished."""
    if not os.path.exists(os.path.join(run_dir, "metrics.json")):
        return None
    saved = torch.load(os.path.join(run_dir, "model.pt"), weights_only=True)
    phi = ae.build_encoder(cfg.dataset, cfg.rep_dim, cfg.bn_affine, cfg.width)
    phi.load_state_dict(saved["phi"])
    head = ocnn.OCNN(cfg.rep_dim, cfg.ocnn_hidden, cfg.ocnn_activation, cfg.ocnn_normalize)
    head.load_state_dict(saved["head"])
    d = data.one_class_split(cfg.dataset, cfg.normal_class, cfg.pollution_rate, cfg.seed, cfg.data_root,
                             "cpu", cfg.scaling, cfg.calibration)
    z_train, z_test = ae.encode(phi, d.x_train), ae.encode(phi, d.x_test)   # eval mode
    norm = z_test.norm(dim=1)                                                # (N_test,) ||phi(x)||
    if cfg.ocnn_normalize:                                                   # the codes the head sees
        z_train, z_test = ocnn.unit_codes(z_train), ocnn.unit_codes(z_test)
    m = z_train.mean(dim=0)                                                  # (D,)
    u = (head.w.weight @ head.V.weight).squeeze(0)                           # (D,) linear g only
    y = d.y_test.numpy()
    scores = {"hyperplane": saved["r"] - head(z_test), "mean-proj": -(z_test @ m),
              "sphere": ((z_test - m) ** 2).sum(dim=1)}
    out = {k: 100 * evaluate.auroc(y, s.numpy()) for k, s in scores.items()}
    linear = cfg.ocnn_activation == "linear"                                 # else y_hat is no projection on u
    out["cos(u, m)"] = f"{torch.nn.functional.cosine_similarity(u, m, dim=0).item():.3f}" if linear else "-"
    out["|u|"] = f"{u.norm().item():.2f}" if linear else "-"
    out["|z| normal"] = norm[d.y_test == 0].mean().item()
    out["|z| anomalous"] = norm[d.y_test == 1].mean().item()
    out["r"] = saved["r"]
    if d.polluted.any():                                                     # where the hinge's gradient comes from
        below = head(z_train) < saved["r"]                                   # (n,) the training points below r
        out["polluted"] = f"{int((below & d.polluted).sum())} of the {int(d.polluted.sum())} anomalies and " \
                          f"{int((below & ~d.polluted).sum())} normal images below r"
    return out


def row(cfg, res):
    joint = cfg.objective == "ocnn-joint"
    regime = f"joint, {cfg.ocnn_epochs} ep, encoder lr {cfg.encoder_lr:g}" if joint else "z-only"
    regime += f", {cfg.ocnn_activation} g" if cfg.ocnn_activation != "linear" else ""
    regime += f", nu {cfg.nu:g}" + (", unit codes" if cfg.ocnn_normalize else "")
    regime += f", clip {cfg.ocnn_clip:g}" if cfg.ocnn_clip else ""
    regime += f", pollution {cfg.pollution_rate:g}: {res['polluted']}" if "polluted" in res else ""
    print(f"| {cfg.normal_class} | {cfg.seed} | {regime} | {res['hyperplane']:.2f} | {res['mean-proj']:.2f} | "
          f"{res['sphere']:.2f} | {res['cos(u, m)']} | {res['|u|']} | "
          f"{res['|z| normal']:.1f} / {res['|z| anomalous']:.1f} | {res['r']:.1f} |")


def main(folders):
    print("| class | seed | OC-NN regime | hyperplane | mean-proj | sphere | cos(u, m) | norm of u "
          "| code norm, normal / anomalous | r |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    if folders in ([], ["repro"]):                                          # the runs of a study
        os.chdir(ROOT)
        folders = [os.path.join(ROOT, sweep.run_folder(cfg, folders_.data_identity(cfg.dataset, cfg.data_root), k, s))
                   for cfg, classes, seeds, _ in study(folders) for k in classes for s in seeds]
        folders = [f for f in folders if os.path.exists(os.path.join(f, "metrics.json"))]
    for folder in folders:
        path = os.path.join(folder, "config.json")
        saved = json.load(open(path)) if os.path.exists(path) else {}
        saved = {"ocnn_normalize": False, "ocnn_clip": 0.0, **saved}          # runs from before these options
        fields = {f.name for f in dataclasses.fields(settings.Config)}           # not the data's identity
        cfg = settings.Config(**{k: v for k, v in saved.items() if k in fields}) \
            if saved.get("objective") in ("ocnn", "ocnn-joint") \
            else None
        res = check(folder, cfg) if cfg is not None else None
        if res is None:
            sys.exit(f"{folder} is not a finished OC-NN run (it needs config.json of an ocnn run and metrics.json)")
        row(cfg, res)


def study(which):
    """The sweeps of the option study (default) or, with ['repro'], of the port's reproduction, one class each."""
    if which == ["repro"]:
        return [sweep.parse(["--settings", "port", "--out", "runs/repro", "--normal-class", str(k),
                             "--seeds", "0", "1", "2"] + flags) for k in (0, 1, 2, 5) for flags in REGIMES]
    return [sweep.parse(ablations.variant_argv("mnist", flags, "ocnn-options"))
            for _, _, flags in ablations.QUESTIONS["ocnn-options"][1]]


if __name__ == "__main__":
    main(sys.argv[1:])
